"""A callback that counts host reads of tensor values (what is a host-device sync on a GPU) in each training step.

Used by test_observability.py through `+callbacks.count_host_reads._target_=count_host_reads.HostReads` (the test
puts this folder on the subprocess's PYTHONPATH). On a CPU nothing waits, but the same calls (`.item()`,
`float(t)`, `bool(t)`, `.tolist()`, `.numpy()`, `.cpu()`) would each wait for the GPU: counting them on CPU keeps
the hot loop free of them. A step's count runs from its batch's start to the next batch's start, so it includes
the loader, every callback, the logger flush and the progress bar.
"""

from __future__ import annotations

import json
import os
import traceback
from collections import Counter
from pathlib import Path

import lightning as L
import torch

READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__")


class HostReads(L.Callback):
    def __init__(self, out: str):
        self.out = Path(out)
        self.per_step: dict[int, int] = {}
        self.sites: dict[int, Counter] = {}
        self._originals = {name: getattr(torch.Tensor, name) for name in READS}
        self._count = 0
        self._where: Counter = Counter()
        self._step: int | None = None

    def _patch(self) -> None:
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, self._counting(name, original))

    def _unpatch(self) -> None:
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)

    def _counting(self, name, original):
        def read(tensor, *args, **kwargs):
            stack = traceback.extract_stack(limit=8)[:-1]  # the callers, outermost first
            # torch.optim reads its step counters, which stay on the host on a GPU too (not capturable): no sync
            if f"torch{os.sep}optim{os.sep}" not in stack[-1].filename:
                self._count += 1
                where = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(stack))
                self._where[f"{name} at {where}"] += 1
            return original(tensor, *args, **kwargs)

        return read

    def _close(self) -> None:
        if self._step is not None:
            self.per_step[self._step] = self._count
            self.sites[self._step] = self._where
        self._count, self._where = 0, Counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self._patch()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._close()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._step = trainer.global_step  # the step this batch completed

    def on_train_end(self, trainer, pl_module) -> None:
        self._unpatch()
        self._close()
        self.out.write_text(
            json.dumps({"per_step": self.per_step, "sites": {k: dict(v) for k, v in self.sites.items()}}, indent=1)
        )
