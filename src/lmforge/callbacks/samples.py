"""Generated samples: what the model learned, in words. Written to `samples.txt` in the run folder."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only


class GeneratedSamples(L.Callback):
    """At the end of fit (global rank 0), ask the objective for samples, save and print them."""

    summary_key = "samples"

    def __init__(self, output_dir: str, num_samples: int = 3, max_new_tokens: int = 200,
                 temperature: float = 0.8, top_k: int | None = 50, prompt: str = "", seed: int = 0):
        self.output_dir = Path(output_dir)
        self.kwargs = dict(num_samples=num_samples, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_k=top_k, prompt=prompt, seed=seed)
        self.samples: list[str] = []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.samples = self._generate(trainer, pl_module)

    @rank_zero_only
    def _generate(self, trainer, pl_module) -> list[str]:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            return []
        samples = pl_module.sample_texts(tokenizer, **self.kwargs)
        text = "\n\n".join(f"--- sample {i + 1} ---\n{s}" for i, s in enumerate(samples))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "samples.txt").write_text(text + "\n", encoding="utf-8")
        print(f"\nSamples after {trainer.global_step} steps:\n{text}\n")
        return samples

    def summary(self) -> dict:
        return {"file": "samples.txt", "count": len(self.samples)} if self.samples else {}
