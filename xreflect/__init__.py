"""X-REFLECT: cross-reflection prompting for multimodal recommendation, as a DVC pipeline."""
