"""How the report and the figures name each strategy: the paper's row names."""

LABELS = {
    "popularity": "Item Popularity (sampled candidates)",
    "popularity_global": "Item Popularity (global top-K)",
    "text": "Text", "kar": "KAR", "llm_rec": "LLM-Rec", "text_image": "Text + Image",
    "rec_gpt4v": "Rec-GPT4V", "cot": "CoT", "visual_only": "Visual-only prompting",
    "visual_textual": "Visual-textual prompting", "xr_separate": "Cross-reflection - separate",
    "xr_combined": "Cross-reflection - combined", "xreflect": "X-REFLECT",
    "xreflect_keyword": "X-REFLECT-keyword",
}
