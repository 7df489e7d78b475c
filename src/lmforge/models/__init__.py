"""Plain nn.Modules: no Lightning, no losses. Each family maps token ids to logits."""
