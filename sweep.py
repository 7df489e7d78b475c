"""Search hyperparameters over train.py runs: `python sweep.py hparams_search=<name> [override ...]`.

Every override other than hparams_search / sweep.* / hydra.* goes to every trial. See README.md, "Sweeps".
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import lmforge  # noqa: F401  (registers the config resolvers)

TRAIN_SCRIPT = Path(__file__).resolve().with_name("train.py")


@hydra.main(version_base="1.3", config_path="conf", config_name="sweep")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from lmforge.errors import LmforgeError
    from lmforge.sweep.runner import run_sweep

    try:
        summary = run_sweep(cfg, HydraConfig.get(), TRAIN_SCRIPT)
    except LmforgeError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        sys.exit(2)
    if summary.get("status") == "interrupted":
        sys.exit(130)
    if summary.get("status") == "failed":
        sys.exit(1)
    return (summary.get("best") or {}).get("value")


if __name__ == "__main__":
    main()
