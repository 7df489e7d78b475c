"""The resolved config as a rich tree, printed at the start of a run (global rank 0).

One branch per top-level group, in the order users think of them; the YAML of each below it.
The same config is saved, resolved, to `<run dir>/config.yaml`.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

FIRST = ("data", "tokenizer", "model", "trainer", "callbacks", "logger")


def config_tree(cfg: DictConfig, resolve: bool = True):
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("config", guide_style="dim")
    keys = [k for k in FIRST if k in cfg] + [k for k in cfg if k not in FIRST]
    for key in keys:
        branch = tree.add(str(key), guide_style="dim")
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=resolve) if OmegaConf.is_config(node) else str(node)
        branch.add(rich.syntax.Syntax(text.rstrip(), "yaml", background_color="default"))
    return tree


def print_config_tree(cfg: DictConfig, resolve: bool = True) -> None:
    import rich

    rich.print(config_tree(cfg, resolve=resolve))
