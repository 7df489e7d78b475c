"""Logger factories: W&B (offline unless an API key is configured) and CSV."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lmforge.errors import ConfigError

WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_api_key_configured() -> bool:
    """True when W&B could log online without prompting: WANDB_API_KEY or a `wandb login` netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(save_dir: str, project: str = "lmforge", mode: str = "auto", **kwargs):
    """A Lightning WandbLogger writing its run into the run folder (`save_dir/wandb`).

    mode=auto: online when an API key is configured, otherwise offline (no prompt, no network).
    """
    if mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode={mode!r}: choose one of {', '.join(WANDB_MODES)}.")
    if mode == "auto":
        mode = "online" if wandb_api_key_configured() else "offline"
    os.environ.setdefault("WANDB_SILENT", "true")  # keep the console for our own messages
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    from lightning.pytorch.loggers import WandbLogger

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return WandbLogger(save_dir=save_dir, project=project, mode=mode, **kwargs)
