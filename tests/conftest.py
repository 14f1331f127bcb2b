import os

# Tests never reach a model hub: the packaged MiniLM and models built in the tests are local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
