"""The built-in world: the shapes model's data, captions, tokenizer and judge (`--model_id shapes`)."""
