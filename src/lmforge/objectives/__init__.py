"""LightningModules: a shared base plus one file per objective (examples, loss, metrics, generation)."""
