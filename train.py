"""Train a language model: `python train.py [group=option ...] [key=value ...]`. See README.md."""

import hydra
from omegaconf import DictConfig

import lmforge  # noqa: F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lmforge.train import hydra_task  # imported late so --help and config errors stay fast

    return hydra_task(cfg)  # val/loss: the value Hydra sweepers optimise


if __name__ == "__main__":
    main()
