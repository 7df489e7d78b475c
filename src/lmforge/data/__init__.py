"""Corpora, tokenizers, the token cache and the DataModule. Knows nothing of models."""
