"""Where a trial's `python train.py ...` runs: a subprocess here, or a job submitted with submitit (SLURM).

Both block until the trial ends and return its exit status; the trial's run folder (summary.json)
says what happened. `stop()` ends running trials gracefully: Lightning turns SIGTERM into a clean
stop, so an interrupted trial still writes summary.json with status "interrupted".
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError

LAUNCHERS = ("local", "submitit")


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


class LocalLauncher:
    """Trials as subprocesses of sweep.py. With n_jobs > 1, each concurrent trial gets its own share of
    the GPUs (CUDA_VISIBLE_DEVICES) when there are enough, else its share of the CPU threads."""

    def __init__(self, n_jobs: int = 1):
        self.slots: queue.Queue[int] = queue.Queue()
        for i in range(n_jobs):
            self.slots.put(i)
        self.n_jobs = n_jobs
        self.gpus = _visible_gpus() if n_jobs > 1 else []
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def _slot_env(self, slot: int) -> dict[str, str]:
        if self.n_jobs == 1:
            return {}
        if len(self.gpus) >= self.n_jobs:
            per = len(self.gpus) // self.n_jobs
            return {"CUDA_VISIBLE_DEVICES": ",".join(self.gpus[slot * per : (slot + 1) * per])}
        if "OMP_NUM_THREADS" in os.environ:
            return {}
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return {"OMP_NUM_THREADS": str(max(1, cores // self.n_jobs))}

    def run(self, cmd: list[str], run_dir: Path, env: dict[str, str]) -> int:
        slot = self.slots.get()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "console.log", "w") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**env, **self._slot_env(slot)})
                with self.lock:
                    self.procs.add(proc)
                try:
                    return proc.wait()
                finally:
                    with self.lock:
                        self.procs.discard(proc)
        finally:
            self.slots.put(slot)

    def stop(self) -> None:
        with self.lock:
            for p in self.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)


class SubmititLauncher:
    """Each trial a submitit job: `cluster=slurm` on a SLURM login node, `local` to try it here.
    `parameters` go to `executor.update_parameters` (timeout_min, gpus_per_node, slurm_partition, ...)."""

    def __init__(self, folder: Path, cluster: str | None = None, parameters: dict[str, Any] | None = None):
        import submitit

        self.executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
        try:
            self.executor.update_parameters(**{k: v for k, v in (parameters or {}).items() if v is not None})
        except (ValueError, TypeError) as e:
            raise ConfigError(f"sweep.launcher.parameters: {e}") from None
        self.jobs: set[Any] = set()
        self.lock = threading.Lock()

    def run(self, cmd: list[str], run_dir: Path, env: dict[str, str]) -> int:
        from submitit.core.utils import FailedJobError
        from submitit.helpers import CommandFunction

        run_dir.mkdir(parents=True, exist_ok=True)
        job = self.executor.submit(CommandFunction(cmd, cwd=os.getcwd(), env=env, verbose=False))
        (run_dir / "console.log").write_text(f"submitit job {job.job_id}; its log: {job.paths.stdout}\n")
        with self.lock:
            self.jobs.add(job)
        try:
            job.result()
            return 0
        except FailedJobError:
            return 1
        finally:
            with self.lock:
                self.jobs.discard(job)

    def stop(self) -> None:
        with self.lock:
            for job in self.jobs:
                job.cancel(check=False)


def make_launcher(cfg: dict[str, Any], n_jobs: int, sweep_dir: Path):
    name = cfg.get("name", "local")
    if name == "local":
        return LocalLauncher(n_jobs)
    if name == "submitit":
        return SubmititLauncher(sweep_dir / ".submitit", cfg.get("cluster"), cfg.get("parameters"))
    raise ConfigError(f"sweep.launcher.name={name!r}: choose one of {', '.join(LAUNCHERS)}.")
