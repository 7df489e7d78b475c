"""The W&B sweeps backend: the search space as a W&B sweep config, run by W&B agents.

An agent runs `python train.py <shared overrides> ${args_no_hyphens}`; W&B's `args_no_hyphens`
renders each sampled parameter as `key=value`, which is exactly a Hydra override, so every agent
run is a normal lmforge run (its folder inside the sweep folder, its W&B run attached to the sweep
through the WANDB_SWEEP_ID / WANDB_RUN_ID the agent sets).

Nothing here talks to W&B unless an API key is configured: the translation is written to
`<sweep dir>/wandb_sweep.yaml` first, and without a key sweep.py stops there and prints the
`wandb sweep` / `wandb agent` commands.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from lmforge.errors import ConfigError
from lmforge.sweep.space import Param
from lmforge.sweep.spec import SweepSpec
from lmforge.sweep.trials import TrialRunner

CONFIG_FILE = "wandb_sweep.yaml"
ID_FILE = "wandb_sweep_id.txt"
METHODS = ("bayes", "random", "grid")


def wandb_parameter(p: Param, grid: bool = False) -> dict[str, Any]:
    """One Param as a W&B sweep parameter (https://docs.wandb.ai/guides/sweeps/sweep-config-keys)."""
    if grid or p.kind == "choice":
        values = p.grid()
        if any(v is None for v in values):
            raise ConfigError(
                f"sweep.params.{p.key}: W&B passes values as text and cannot send null; "
                "drop null from the choices for sweep.backend=wandb."
            )
        return {"values": values}
    low, high = p.bounds
    if p.kind == "int":
        if p.log:
            return {"distribution": "q_log_uniform_values", "min": int(low), "max": int(high), "q": 1}
        if p.step is not None and p.step != 1:
            return {"distribution": "q_uniform", "min": int(low), "max": int(high), "q": int(p.step)}
        return {"distribution": "int_uniform", "min": int(low), "max": int(high)}
    if p.log:
        return {"distribution": "log_uniform_values", "min": float(low), "max": float(high)}
    if p.step is not None:
        return {"distribution": "q_uniform", "min": float(low), "max": float(high), "q": float(p.step)}
    return {"distribution": "uniform", "min": float(low), "max": float(high)}


def _method(spec: SweepSpec) -> str:
    method = spec.wandb.get("method") or ("random" if spec.sampler.get("name") == "random" else "bayes")
    if method not in METHODS:
        raise ConfigError(f"sweep.wandb.method={method!r}: choose one of {', '.join(METHODS)}.")
    return method


def _early_terminate(spec: SweepSpec) -> dict[str, Any] | None:
    """W&B early-terminates with Hyperband only; the median pruner has no W&B counterpart."""
    if spec.pruner.get("name") != "hyperband":
        return None
    # W&B counts iterations as times the metric was logged: one per validation here.
    return {
        "type": "hyperband",
        "min_iter": int(spec.wandb.get("min_iter", 2)),
        "eta": int(spec.pruner.get("reduction_factor", 3)),
    }


def sweep_config(spec: SweepSpec) -> dict[str, Any]:
    """The W&B sweep config for `spec`; its command runs train.py with the shared overrides, a run folder
    inside the sweep folder, then the sampled parameters."""
    method = _method(spec)
    command = ["${env}", "${interpreter}", "${program}"]
    for d in spec.config_dirs:
        command += ["--config-dir", d]
    # Hydra resolves ${oc.env:WANDB_RUN_ID} in the trial, where the agent has set it: one folder per run.
    command += [*spec.trial_overrides, f"hydra.run.dir={spec.dir}/trial_${{oc.env:WANDB_RUN_ID}}", "${args_no_hyphens}"]
    config: dict[str, Any] = {
        "name": spec.name,
        "program": str(spec.train_script),
        "method": method,
        "metric": {"name": spec.metric, "goal": spec.direction},
        "parameters": {p.key: wandb_parameter(p, grid=method == "grid") for p in spec.space},
        "command": command,
    }
    if (early := _early_terminate(spec)) is not None:
        config["early_terminate"] = early
    if spec.n_trials:
        config["run_cap"] = spec.n_trials
    return config


def agent_args(sampled: dict[str, Any]) -> list[str]:
    """What an agent appends for `${args_no_hyphens}` given the sampled values (W&B's own formatting)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    return create_sweep_command_args({"args": {k: {"value": v} for k, v in sampled.items()}})["args_no_hyphens"]


def write_config(spec: SweepSpec) -> dict[str, Any]:
    from omegaconf import OmegaConf

    config = sweep_config(spec)
    spec.dir.mkdir(parents=True, exist_ok=True)
    (spec.dir / CONFIG_FILE).write_text(
        "# W&B sweep config written by sweep.py (sweep.backend=wandb)\n" + OmegaConf.to_yaml(OmegaConf.create(config))
    )
    return config


def run_wandb_sweep(spec: SweepSpec, runner: TrialRunner, remaining: int) -> bool:
    """Create the W&B sweep (once; its id is kept in the sweep folder) and run an agent here for
    `remaining` runs. Returns False, after printing what to run, when no W&B API key is configured."""
    from lmforge.loggers import wandb_api_key_configured

    config = write_config(spec)
    project = spec.wandb.get("project") or "lmforge"
    entity = spec.wandb.get("entity")
    id_file = spec.dir / ID_FILE
    sweep_id = spec.wandb.get("sweep_id") or (id_file.read_text().strip() if id_file.exists() else None)
    if not spec.wandb.get("create", True) or not wandb_api_key_configured():
        why = "sweep.wandb.create=false" if not spec.wandb.get("create", True) else "no W&B API key"
        runner.say(
            f"W&B sweep config: {spec.dir / CONFIG_FILE} ({why}, so nothing was created).\n"
            "Create the sweep and start agents anywhere that shares this folder:\n"
            f"  wandb sweep --project {project} {spec.dir / CONFIG_FILE}\n"
            f"  wandb agent --count {remaining} <entity>/{project}/<sweep id>\n"
            "then re-run this command with sweep.wandb.sweep_id=<sweep id> to run agents here or summarise."
        )
        return False
    import wandb

    if not sweep_id:
        sweep_id = wandb.sweep(config, entity=entity, project=project)
        id_file.write_text(sweep_id + "\n")
    path = "/".join(x for x in (entity, project, sweep_id) if x)
    if remaining <= 0:
        return True
    runner.say(f"W&B sweep {path}: running an agent here for {remaining} runs (run folders in {spec.dir}).")
    cmd = [sys.executable, "-m", "wandb", "agent", "--count", str(remaining), path]
    with runner.stop_on_signals():
        proc = subprocess.Popen(cmd, env=runner.env())
        runner.launcher.procs.add(proc)  # stopped with the sweep like any trial
        proc.wait()
    (spec.dir / "wandb_agent.json").write_text(json.dumps({"sweep": path, "exit": proc.returncode}) + "\n")
    return True
