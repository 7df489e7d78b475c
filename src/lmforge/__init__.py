"""lmforge: train GPT, BERT and T5 language models with Lightning + Hydra, and report what each run cost."""

__version__ = "0.1.0"

from lmforge import resolvers as _resolvers

_resolvers.register()
