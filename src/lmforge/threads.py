"""How many threads torch's CPU kernels use: the cores this run can have, not the cores the machine has.

torch sizes its thread pool to the machine's cores and its threads spin at every parallel region's barrier, so on
a CPU another process is already using, each step waits for the thread that lost its core: a run beside one
CPU-bound job on 2 cores was several times slower with 2 threads than with 1 (bench/threads.py measures it:
bench/results/threads.json). `threads=auto` (conf/train.yaml) therefore counts the cores of this process's CPU
set that other work is using now, gives the rest to this run's processes on the node, and says what it chose in
the run header and summary.json's `scale.threads`. `threads=N` sets N; OMP_NUM_THREADS, when set, wins over auto
(torchrun and SLURM scripts set it per rank). On a GPU, auto leaves torch's default: the host threads only feed
the device there.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from lmforge.errors import ConfigError
from lmforge.hardware import cpu_physical_cores

SAMPLE_S = 0.1  # how long /proc/stat is watched for other work; runs once, before the Trainer starts
# A core counts as taken when other work used at least this much of it while we watched: a core some shell or
# logger touches now and then still runs our threads at nearly full speed; one a training job holds does not.
BUSY_CORE = 0.8


_exported: str | None = None  # the OMP_NUM_THREADS this process set for its children (apply_threads)


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # for the run header: why this many

    def as_dict(self) -> dict[str, object]:
        return {"threads": self.threads, "threads_reason": self.reason}


def check_threads_setting(setting: object) -> None:
    if setting == "auto" or (isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1):
        return
    raise ConfigError(f"threads={setting!r} must be auto or a positive integer (torch CPU threads per process).")


def busy_cores(cpus: set[int], seconds: float = SAMPLE_S) -> float:
    """Cores of `cpus` other processes kept busy over `seconds` (this process sleeps meanwhile), from /proc/stat."""

    def read() -> dict[int, tuple[int, int]]:
        times: dict[int, tuple[int, int]] = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                    times[int(name[3:])] = (sum(ticks), ticks[3] + ticks[4])
        return times

    before = read()
    time.sleep(seconds)
    after = read()
    busy = 0.0
    for cpu, (total, idle) in after.items():
        if cpu in before and total > before[cpu][0]:
            dt = total - before[cpu][0]
            busy += 1.0 - (idle - before[cpu][1]) / dt
    return busy


def choose_threads(setting: object, on_gpu: bool, processes_here: int) -> ThreadChoice:
    """The thread count for this process: `setting` is cfg.threads (auto or N); `processes_here` the run's
    processes on this node, which share its cores."""
    check_threads_setting(setting)
    if isinstance(setting, int):
        return ThreadChoice(setting, f"threads={setting}")
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) >= 1 and omp != _exported:  # set by the user or a launcher, not by our last run
        return ThreadChoice(int(omp), "OMP_NUM_THREADS")
    if on_gpu:
        import torch

        return ThreadChoice(torch.get_num_threads(), "torch's default (GPU run)")
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        taken = int(busy_cores(cpus) + 1 - BUSY_CORE)  # cores at least BUSY_CORE busy, counted whole
    except (OSError, ValueError):  # no /proc/stat (macOS): assume the cores are ours
        taken = 0
    free = max(1, min(len(cpus) - taken, cpu_physical_cores()))  # torch's own default is the physical cores
    threads = max(1, free // max(1, processes_here))
    parts = [f"{len(cpus)} core(s)"]
    if taken:
        parts.append(f"{taken} busy with other work")
    if processes_here > 1:
        parts.append(f"{processes_here} processes")
    return ThreadChoice(threads, "auto: " + ", ".join(parts))


def apply_threads(choice: ThreadChoice) -> None:
    """This process's torch threads, and the same for the ranks it starts: Lightning's launcher leaves torch's pool
    alone where OMP_NUM_THREADS is set, and the ranks, new processes, take it as set by a launcher."""
    global _exported
    import torch

    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    if choice.reason != "OMP_NUM_THREADS":
        os.environ["OMP_NUM_THREADS"] = _exported = str(choice.threads)
