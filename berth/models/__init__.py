"""Remote models: fetching URLs and Hugging Face repos into the node's cache."""
