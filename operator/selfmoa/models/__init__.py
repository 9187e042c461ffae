"""What every model user needs, below the engines and training: chat messages, tokenizer loading
and prompt rendering, torch thread settings."""
