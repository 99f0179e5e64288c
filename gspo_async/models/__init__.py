"""The tiny local model and tokenizer (quickstart, tests) and model loading."""
