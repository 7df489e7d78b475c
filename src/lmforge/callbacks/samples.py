"""Generated samples: what the model learned, in words.

At the end of fit they are written to `samples.txt` in the run folder and printed. With a W&B
logger, samples are also generated at every validation during fit and logged as a W&B Table
(`samples`: step, sample, text), so the dashboard shows the text improving step by step.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lmforge.console import say
from lmforge.errors import ConfigError
from lmforge.generation import check_top_p
from lmforge.objectives.base import LMObjective

TABLE_KEY = "samples"
TABLE_COLUMNS = ["step", "sample", "text"]


class GeneratedSamples(L.Callback):
    """Ask the objective for samples (global rank 0; every rank of a sharded model): at each validation for W&B,
    and at the end of fit. Rank 0 logs, saves and prints them."""

    summary_key = "samples"

    def __init__(
        self,
        output_dir: str,
        num_samples: int = 3,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 50,
        prompt: str = "",
        seed: int = 0,
        every_validation: bool = True,
        top_p: float | None = None,
    ):
        try:
            check_top_p(top_p)
        except ValueError as e:
            raise ConfigError(f"callbacks.samples.{e}") from None
        self.output_dir = Path(output_dir)
        self.kwargs = dict(
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            prompt=prompt,
            seed=seed,
        )
        self.every_validation = every_validation
        self.samples: list[str] = []
        self.rows: list[list] = []  # every sample so far, for the W&B table
        self._step: int | None = None  # the step self.samples were generated at

    @staticmethod
    def _wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only inside fit (not the sanity check, not a stand-alone validate) and only if a table has a reader.
        if (
            self.every_validation
            and not trainer.sanity_checking
            and trainer.state.fn == "fit"
            and self._wandb_loggers(trainer)
        ):
            self._generate(trainer, pl_module, log_table=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._step != trainer.global_step:  # a validation at the last step already made them
            self._generate(trainer, pl_module, log_table=True)
        self._write(trainer)

    def _generate(self, trainer: L.Trainer, pl_module: L.LightningModule, log_table: bool) -> None:
        from lmforge.parallel.wrap import is_sharded

        # A sharded model (FSDP) needs every rank to gather its weights: then all ranks generate (the same text).
        # lmforge.generation gathers them (full_weights) and runs eagerly, once per decoding call.
        datamodule = getattr(trainer, "datamodule", None)  # set by Lightning in fit; not declared on Trainer
        tokenizer = getattr(datamodule, "tokenizer", None)
        if not isinstance(pl_module, LMObjective) or tokenizer is None:
            return
        if not (trainer.is_global_zero or is_sharded(pl_module)):
            return
        samples = pl_module.sample_texts(tokenizer, **self.kwargs)
        self._step = trainer.global_step
        if not trainer.is_global_zero:
            return
        self.samples = samples
        if not log_table or not self.samples:
            return
        self.rows += [[trainer.global_step, i + 1, s] for i, s in enumerate(self.samples)]
        for lg in self._wandb_loggers(trainer):
            # The whole table each time: W&B shows the latest version of a key, so it must hold every step.
            lg.log_text(
                key=TABLE_KEY, columns=TABLE_COLUMNS, data=[list(r) for r in self.rows], step=trainer.global_step
            )

    @rank_zero_only
    def _write(self, trainer: L.Trainer) -> None:
        if not self.samples:
            return
        text = "\n\n".join(f"--- sample {i + 1} ---\n{s}" for i, s in enumerate(self.samples))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "samples.txt").write_text(text + "\n", encoding="utf-8")
        say(f"\nSamples after {trainer.global_step} steps:\n{text}\n")

    def summary(self) -> dict:
        return {"file": "samples.txt", "count": len(self.samples)} if self.samples else {}
