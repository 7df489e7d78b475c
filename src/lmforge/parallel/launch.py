"""Ranks that Lightning starts itself run exactly this Hydra job, in this job's run folder.

Lightning's subprocess launcher (`trainer.devices=N` without an external launcher) re-runs the script once per
extra local rank. With Hydra it re-runs the whole `sys.argv` plus `hydra.run.dir=<run.dir>`, which is right for a
single run but not under `-m`: each child would start the whole sweep again (`-m a=1,2`), and `hydra.run.dir` is not
the job's folder (that is `hydra.sweep.dir/<job>`). Inside a submitit job `sys.argv` is not even train.py. See
Lightning #11617 (merged, then reverted in #15737), the open #18175 and Hydra #2070. `child_command` starts the same
job instead: train.py with this job's own overrides, in this job's output folder, writing nothing there itself.

Under `-m` one process also runs several jobs in a row; `isolated_job()` lets each start clean: its own process
group and port, with the environment Lightning set for the previous job's children removed (otherwise the next
job would take those variables for an external launcher's and wait for ranks that never come).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Environment Lightning's launcher sets in the launching process for its children.
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra overrides that concern the sweep or the launching process, not the job a rank must run.
_NOT_FOR_RANKS = (
    "hydra.mode=",
    "hydra.run.dir=",
    "hydra.output_subdir=",
    "hydra.job.name=",
    "hydra/launcher=",
    "hydra/sweeper=",
    "hydra.launcher.",
    "hydra.sweeper.",
    "hydra.sweep.",
)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def child_command(local_rank: int) -> tuple[list[str], str]:
    """(argv, cwd) of local rank `local_rank` of the running Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    sources = {s.provider: s.path for s in hc.runtime.config_sources}
    config_dir = Path(sources["main"].removeprefix("file://"))
    entry = config_dir.parent / "train.py"  # conf/ sits beside train.py; also right when sweep.py or submitit ran us
    if not entry.exists():
        entry = Path(sys.argv[0]).resolve()
    argv = [sys.executable, str(entry), f"--config-path={config_dir}", f"--config-name={hc.job.config_name}"]
    argv += [
        f"--config-dir={path.removeprefix('file://')}"
        for provider, path in sources.items()
        if provider == "command-line"
    ]
    argv += [o for o in hc.overrides.hydra if not o.lstrip("+~").startswith(_NOT_FOR_RANKS)]
    argv += list(hc.overrides.task)
    argv += [
        f"hydra.run.dir={_quote(hc.runtime.output_dir)}",
        "hydra.output_subdir=null",  # rank 0 wrote .hydra/ already
        "hydra.job_logging.root.handlers=[]",
    ]  # train.log is rank 0's; others print only warnings
    return argv, hc.runtime.cwd


@contextmanager
def isolated_job() -> Iterator[None]:
    """Around one Hydra job: Lightning's child ranks run `child_command`; afterwards the process group is destroyed
    and the launcher's environment variables restored, so the next job of a sweep launches its own ranks."""
    import lightning.fabric.strategies.launchers.subprocess_script as fabric_launcher
    import lightning.pytorch.strategies.launchers.subprocess_script as pytorch_launcher

    saved_env = {k: os.environ.get(k) for k in DIST_ENV}
    saved_cmd = pytorch_launcher._hydra_subprocess_cmd, fabric_launcher._hydra_subprocess_cmd
    pytorch_launcher._hydra_subprocess_cmd = fabric_launcher._hydra_subprocess_cmd = child_command
    try:
        yield
    finally:
        pytorch_launcher._hydra_subprocess_cmd, fabric_launcher._hydra_subprocess_cmd = saved_cmd
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
