"""Plain nn.Modules: no Lightning, no losses. Each family maps token ids to logits.

One family is: `<family>.py` (its config dataclass and net, a `FamilyNet` (base.py) that counts its own FLOPs),
`<family>_hf.py` (its Hugging Face adapter), one `register(Family(...))` in registry.py, and a conf/model/ config.
layers.py holds the layers BERT and T5 share; hf.py the generic conversion (coverage-checked copy, folders,
tokenizer).
"""
