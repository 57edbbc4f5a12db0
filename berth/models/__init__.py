"""Models: what a deployment's `model` may name (presets), what a model's files say (facts, from their
headers), and fetching URLs and Hugging Face repos into the node's cache."""
