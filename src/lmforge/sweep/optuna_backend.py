"""The Optuna backend (and the grid backend, which is Optuna with a GridSampler).

The study lives in `<sweep dir>/study.db` (sqlite). Each trial is a `python train.py` process that
reports val/loss to its Optuna trial through that file (lmforge.callbacks.pruning), so the pruner
sees intermediate values. Re-running the same command loads the study: finished trials count
against `sweep.n_trials`, trials cut short by an interrupted sweep are run again with the same
parameters, and a finished sweep runs nothing.

hydra-optuna-sweeper is not used: it pins optuna<3, its sqlite storage fails with SQLAlchemy 2,
and it cannot prune because Hydra hides the trial from the task.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lmforge.callbacks.pruning import SQLITE_TIMEOUT_S, TRIAL_FILE, make_pruner
from lmforge.errors import ConfigError
from lmforge.sweep.grid import grid_size, make_grid_sampler
from lmforge.sweep.space import Param, format_override
from lmforge.sweep.spec import SweepSpec
from lmforge.sweep.trials import PRUNING_OVERRIDE, SweepInterrupted, TrialRunner, trial_dir_name

STUDY_FILE = "study.db"
FAILURES_BEFORE_ABORT = 3


class TrialFailed(Exception):
    """A trial's run failed (bad value, NaN loss, crash): recorded, and the sweep goes on."""


def storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / STUDY_FILE).absolute()}"


def _sampler(spec: SweepSpec, seed: int):
    import optuna

    if spec.backend == "grid":
        return make_grid_sampler(spec.space, seed)
    if spec.sampler["name"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(spec.sampler.get("n_startup_trials", 10)))


def _suggest(trial, p: Param, grid: bool) -> Any:
    if grid or p.kind == "choice":
        return trial.suggest_categorical(p.key, p.grid() if grid else list(p.choices))
    if p.log and p.step is not None:
        raise ConfigError(f"sweep.params.{p.key}: a log scale and a step cannot be combined; use interval().")
    low, high = p.bounds
    if p.kind == "int":
        return trial.suggest_int(p.key, int(low), int(high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(p.key, float(low), float(high), step=p.step, log=p.log)


def open_study(spec: SweepSpec):
    import optuna

    optuna.logging.set_verbosity(logging.ERROR)  # sweep.py reports trials (and their failures) itself
    storage = optuna.storages.RDBStorage(
        storage_url(spec.dir), engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    )
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction=spec.direction,
        load_if_exists=True,
        pruner=make_pruner(spec.pruner),
    )
    return study, storage


def _recover(study, storage) -> None:
    """Trials left RUNNING belong to a sweep process that is gone (the sweep folder is locked while one
    runs): mark them failed-as-interrupted, and queue every interrupted trial once more, same parameters."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if (
            t.state == TrialState.FAIL
            and t.user_attrs.get("interrupted")
            and t.user_attrs.get("launched")
            and t.number not in retried
        ):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


def _same_grid_point(storage, study_id: int, number: int, retry_of: int) -> None:
    """A retried trial takes over the grid point of the one it repeats: GridSampler gives queued
    trials none, and needs one to tell when the grid is done."""
    original = storage.get_trial_system_attrs(storage.get_trial_id_from_study_id_trial_number(study_id, retry_of))
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    for key in ("search_space", "grid_id"):
        if key in original:
            storage.set_trial_system_attr(trial_id, key, original[key])


def _nothing_works(study) -> bool:
    """Every trial so far failed on its own: something all trials share is broken (an override, the data);
    stop rather than spend the whole budget on the same error."""
    from optuna.trial import TrialState

    ended = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("launched") and t.state != TrialState.RUNNING and not t.user_attrs.get("interrupted")
    ]
    failed = sum(t.state == TrialState.FAIL for t in ended) + 1  # + the trial failing now
    return failed >= FAILURES_BEFORE_ABORT and failed == len(ended) + 1


def finished_count(study) -> int:
    """Trials that used up budget: completed, pruned, or failed on their own (not interrupted)."""
    from optuna.trial import TrialState

    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and t.user_attrs.get("launched") and not t.user_attrs.get("interrupted"))
    )


def budget(spec: SweepSpec) -> int:
    if spec.backend == "grid":
        size = grid_size(spec.space)
        return min(spec.n_trials, size) if spec.n_trials else size
    assert spec.n_trials is not None  # only a grid may leave it open (build_spec checks)
    return spec.n_trials


def run_study(spec: SweepSpec, runner: TrialRunner) -> None:
    """Run what is left of the sweep (raises SweepInterrupted when stopped by a signal)."""
    import optuna

    study, storage = open_study(spec)
    _recover(study, storage)
    # TPE/random: a fresh seed per invocation, derived from the history, so a resumed sweep does not
    # redraw its first samples. Grid: the same seed every time, since it fixes the order of the grid.
    offset = 0 if spec.backend == "grid" else len(study.get_trials(deepcopy=False))
    study.sampler = _sampler(spec, spec.seed + offset)
    study_id = storage.get_study_id_from_name(spec.name)
    remaining = budget(spec) - finished_count(study)
    if remaining <= 0:
        runner.say(f"Sweep '{spec.name}' is complete ({budget(spec)} trials); nothing to run.")
        return
    runner.say(
        f"Sweep '{spec.name}': {remaining} of {budget(spec)} trials to run, {spec.n_jobs} at a time "
        f"({spec.backend}, pruner {spec.pruner['name'] if spec.pruning else 'none'}); folder {spec.dir}"
    )

    def objective(trial) -> float:
        if runner.stopping.is_set():
            trial.set_user_attr("interrupted", True)
            raise SweepInterrupted()
        if spec.backend == "grid" and trial.user_attrs.get("retry_of") is not None:
            _same_grid_point(storage, study_id, trial.number, trial.user_attrs["retry_of"])
        values = {p.key: _suggest(trial, p, spec.backend == "grid") for p in spec.space}
        overrides = [format_override(k, v) for k, v in values.items()]
        run_dir = spec.dir / trial_dir_name(trial.number)
        trial.set_user_attr("run_dir", run_dir.name)
        trial.set_user_attr("overrides", overrides)
        if spec.pruning:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / TRIAL_FILE).write_text(
                json.dumps(
                    {
                        "storage": storage_url(spec.dir),
                        "study_name": spec.name,
                        "trial_number": trial.number,
                        "monitor": spec.pruner.get("monitor", "val/loss"),
                        "pruner": spec.pruner,
                    },
                    indent=1,
                )
                + "\n"
            )
        trial.set_user_attr("launched", True)
        outcome = runner.run(trial.number, overrides, [PRUNING_OVERRIDE] if spec.pruning else [])
        if outcome.status == "completed":
            assert outcome.value is not None  # a completed trial without the metric is failed (read_outcome)
            return outcome.value
        if outcome.status == "pruned":
            raise optuna.TrialPruned()
        if outcome.status == "interrupted":
            trial.set_user_attr("interrupted", True)
            raise SweepInterrupted()
        trial.set_user_attr("error", outcome.message)
        if _nothing_works(trial.study):
            runner.aborted = f"the first {FAILURES_BEFORE_ABORT} trials all failed; the last: {outcome.message}"
            trial.study.stop()
        raise TrialFailed(outcome.message)

    def stop_when_asked(study, _trial) -> None:
        if runner.stopping.is_set():
            study.stop()

    with runner.stop_on_signals():
        try:
            study.optimize(
                objective, n_trials=remaining, n_jobs=spec.n_jobs, catch=(TrialFailed,), callbacks=[stop_when_asked]
            )
        except SweepInterrupted:
            pass
    if runner.stopping.is_set():
        raise SweepInterrupted()


def trial_records(spec: SweepSpec) -> list[dict[str, Any]]:
    """One record per launched trial: number, run_dir, state, overrides, params, retry_of, error."""
    from optuna.trial import TrialState

    study, _ = open_study(spec)

    states = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running"}
    records = []
    for t in study.get_trials(deepcopy=False):
        if not t.user_attrs.get("launched"):
            continue
        state = states.get(t.state) or ("interrupted" if t.user_attrs.get("interrupted") else "failed")
        records.append(
            {
                "number": t.number,
                "run_dir": t.user_attrs.get("run_dir"),
                "state": state,
                "overrides": t.user_attrs.get("overrides", []),
                "params": dict(t.params),
                "retry_of": t.user_attrs.get("retry_of"),
                "error": t.user_attrs.get("error"),
            }
        )
    return records
