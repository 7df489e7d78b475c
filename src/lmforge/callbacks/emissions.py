"""EmissionsCallback: CodeCarbon energy / CO2e tracking for a Lightning run.

Rank-aware: one tracker per node, on local rank 0. CodeCarbon's default ``machine``
tracking mode measures the whole node (CPU, RAM and every visible GPU), so one tracker
per rank would count a node N times under DDP/FSDP. Per-node totals are gathered to
global rank 0 at the end of fit/test, so ``summary()`` there covers every node.

Files, in ``output_dir`` (the run folder):
  emissions.csv            CodeCarbon's own CSV, one row per tracker session (fit, test),
                           rewritten at every phase boundary so a crash leaves recent totals
  emissions_timeline.csv   our samples: time, step, phase, cumulative kWh/kg, interval power
  (node k > 0 writes emissions_node{k}.csv / emissions_timeline_node{k}.csv)

Why not CodeCarbon's tasks for the train / validation split: in 3.3.2 ``start_task``
re-stamps the tracker's start time and last-measurement time without measuring first,
so the energy since the last periodic sample is dropped and the run's ``duration`` only
counts from the last task start (measured here: a 6.5 s run reported 2.0 s and 2.0 s of
energy); it also pauses periodic sampling while a task runs. Instead the callback takes
a fresh reading (``tracker.flush()``) at each phase boundary and attributes the difference.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import math
import os
import warnings
import weakref
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info

from lmforge.emissions.estimate import format_projection, project
from lmforge.emissions.method import describe_method
from lmforge.emissions.recorder import Reading, make_recorder
from lmforge.errors import ConfigError
from lmforge.log_steps import write_metrics

log = logging.getLogger(__name__)


class EmissionsWarning(UserWarning):
    """The tracker failed; training goes on without (complete) emissions data."""


def _warn(msg: str) -> None:
    warnings.warn(msg, EmissionsWarning, stacklevel=3)
    log.warning(msg)


class EmissionsCallback(Callback):
    """Track energy and CO2e with CodeCarbon; log ``emissions/*``; feed ``summary.json``.

    Args:
        output_dir: run folder for the CSVs (default: ``trainer.default_root_dir``).
        country_iso_code, region: grid location for the offline tracker (ISO 3166 alpha-3;
            region only for USA/CAN/CHN states/provinces, e.g. "california").
        pue: datacenter PUE applied to measured energy and power.
        measure_power_secs: CodeCarbon's energy sampling interval.
        online: use the online ``EmissionsTracker`` (geolocates over the network).
        project_at: after this fraction of the run's optimizer steps, project the whole
            run's energy/CO2e from what was measured (None or 0 disables).
        log_every_n_steps: logging cadence (default: the trainer's).
        intensity: force a grid intensity in gCO2e/kWh instead of CodeCarbon's data.
        tracking_mode: "machine" (whole node, default) or "process".
        enabled: False turns the callback into a no-op.
    """

    summary_key = "emissions"

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        country_iso_code: str = "USA",
        region: str | None = None,
        pue: float = 1.0,
        measure_power_secs: float = 15,
        online: bool = False,
        project_at: float | None = 0.1,
        log_every_n_steps: int | None = None,
        intensity: float | None = None,
        tracking_mode: str = "machine",
        project_name: str = "lmforge",
        experiment_name: str | None = None,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        if not (isinstance(measure_power_secs, (int, float)) and measure_power_secs > 0):
            raise ConfigError(f"callbacks.emissions.measure_power_secs must be > 0 seconds, got {measure_power_secs!r}")
        if not (isinstance(pue, (int, float)) and pue >= 1.0):
            raise ConfigError(f"callbacks.emissions.pue must be >= 1.0 (facility/IT energy), got {pue!r}")
        if project_at is not None and not (0 <= float(project_at) < 1):
            raise ConfigError(f"callbacks.emissions.project_at must be a fraction in [0, 1), got {project_at!r}")
        if log_every_n_steps is not None and int(log_every_n_steps) < 1:
            raise ConfigError(f"callbacks.emissions.log_every_n_steps must be >= 1, got {log_every_n_steps!r}")
        if tracking_mode not in ("machine", "process"):
            raise ConfigError(
                f"callbacks.emissions.tracking_mode must be 'machine' or 'process', got {tracking_mode!r}"
            )
        if intensity is not None and float(intensity) < 0:
            raise ConfigError(f"callbacks.emissions.intensity must be >= 0 gCO2e/kWh, got {intensity!r}")
        if enabled and not online:
            _check_country(country_iso_code)
        self.output_dir = Path(output_dir) if output_dir else None
        self.country_iso_code = str(country_iso_code).upper()
        self.region = region
        self.pue = float(pue)
        self.measure_power_secs = float(measure_power_secs)
        self.online = bool(online)
        self.project_at = float(project_at) if project_at else None
        self.log_every_n_steps = int(log_every_n_steps) if log_every_n_steps else None
        self.intensity = float(intensity) if intensity is not None else None
        self.tracking_mode = tracking_mode
        self.project_name = project_name
        self.experiment_name = experiment_name
        self.enabled = bool(enabled)
        self.estimate: dict[str, Any] | None = None  # the pre-run estimate; train.py may set it

        self._tracker: Any = None
        self._recorder: Any = None
        self._t0: float | None = None  # set by the first sample
        self._step = 0
        self._interrupted = False
        self._phase = "other"
        self._phase_stack: list[str] = []
        self._mark: dict[str, Any] | None = None  # totals at the last phase boundary
        self._phases: dict[str, dict[str, float]] = {}
        self._train_start: dict[str, Any] | None = None
        self._train_start_step = 0  # global_step when this session's training began (a resumed run's checkpoint step)
        self._projection: dict[str, Any] | None = None
        self._last_logged_step = -1
        self._sessions = 0
        self._method: str | None = None
        self._method_detail: dict[str, Any] | None = None
        self._errors: list[str] = []
        self._is_tracker_rank = False
        self._node_rank = 0
        self._num_nodes = 1
        self._world_size = 1
        self._other_nodes: dict[int, dict[str, float]] = {}
        self._trackers_seen: int | None = None
        self._files: dict[str, str] = {}
        self._before_resume: dict[str, Any] | None = None  # the run's totals up to the checkpoint we resumed from
        _LIVE.add(self)

    # ------------------------------------------------------------------ tracker plumbing
    def _start(self, trainer: Any) -> None:
        out = self.output_dir or Path(trainer.default_root_dir)
        suffix = "" if self._node_rank == 0 else f"_node{self._node_rank}"
        csv_name, tl_name = f"emissions{suffix}.csv", f"emissions_timeline{suffix}.csv"
        try:
            # CodeCarbon 3.3.2 swallows a missing output_dir inside a @suppress'ed __init__
            # and leaves a half-built tracker: create it first, check the result after.
            out.mkdir(parents=True, exist_ok=True)
            if self._recorder is None:
                self._recorder = make_recorder(self, out / tl_name)
            self._tracker = self._build_tracker(out, csv_name, trainer)
            self._tracker.start()  # also @suppress'ed: a failed start leaves _start_time None
            if getattr(self._tracker, "_start_time", None) is None:
                raise RuntimeError("CodeCarbon tracker did not start (set CODECARBON_LOG_LEVEL=info to see why)")
        except Exception as e:  # a tracker failure never stops training
            self._fail(f"emissions tracking disabled: {type(e).__name__}: {e}")
            return
        self._files = {"csv": csv_name, "timeline": tl_name}
        self._sessions += 1
        if self._method is None:
            self._method, self._method_detail = describe_method(self._tracker)
        # Phases start from the session's zero (the totals of earlier sessions), not from a first reading:
        # energy measured between start() and that reading would otherwise belong to no phase.
        base = self._recorder.base
        self._mark = {"energy_kwh": base["energy_kwh"], "co2_kg": base["co2_kg"], "duration_s": base["duration_s"]}

    def _build_tracker(self, out: Path, csv_name: str, trainer: Any) -> Any:
        import codecarbon
        from codecarbon.emissions_tracker import BaseEmissionsTracker

        # Constructor logs come before its log_level is applied: silence the logger first.
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        kwargs: dict[str, Any] = dict(
            project_name=self.project_name,
            experiment_name=self.experiment_name or out.name,
            output_dir=str(out),
            output_file=csv_name,
            measure_power_secs=self.measure_power_secs,
            pue=self.pue,
            log_level="error",
            tracking_mode=self.tracking_mode,
            # True is 3.x's default; explicit because 2.x defaulted to a lock file that makes
            # a second run on the machine (e.g. a parallel sweep) silently track nothing.
            allow_multiple_runs=True,
            on_csv_write="update",  # one row per session, rewritten at each flush()
            api_call_interval=1,  # call our recorder's live_out after every measurement
            output_handlers=[self._recorder],
            force_carbon_intensity_g_co2e_kwh=self.intensity,
            gpu_ids=_gpu_ids(trainer),
        )
        try:
            from codecarbon.output_methods.base_output import OutputMethod

            kwargs["output_methods"] = [OutputMethod.CSV]
        except ImportError:  # codecarbon 2.x
            kwargs["save_to_file"] = True
        accepted = set(inspect.signature(BaseEmissionsTracker.__init__).parameters)
        if self.intensity is not None and "force_carbon_intensity_g_co2e_kwh" not in accepted:
            _warn(
                f"codecarbon {codecarbon.__version__} cannot force a grid intensity; "
                "callbacks.emissions.intensity is ignored (needs codecarbon >= 3)"
            )
        kwargs = {k: v for k, v in kwargs.items() if k in accepted and v is not None}
        tracker: BaseEmissionsTracker
        if self.online:
            tracker = codecarbon.EmissionsTracker(**kwargs)
        else:
            tracker = codecarbon.OfflineEmissionsTracker(
                country_iso_code=self.country_iso_code, region=self.region, **kwargs
            )
        if getattr(tracker, "_output_handlers", None) is None or getattr(tracker, "_scheduler", None) is None:
            raise RuntimeError(f"CodeCarbon tracker failed to initialise (output_dir={out})")
        return tracker

    def _read(self) -> Reading | None:
        """Current cumulative totals, freshly measured (flush() also rewrites emissions.csv)."""
        if self._recorder is None:
            return None
        if self._tracker is not None:
            try:
                self._tracker.flush()
            except Exception as e:
                self._errors.append(f"flush failed: {e}")
        return self._recorder.latest

    def _enter(self, phase: str, now: Reading | None = None) -> None:
        """Attribute energy since the last boundary to the current phase, then switch."""
        if self._tracker is not None or now is not None:
            now = now if now is not None else self._read()
            if now is not None and self._mark is not None:
                acc = self._phases.setdefault(self._phase, {"energy_kwh": 0.0, "co2_kg": 0.0, "duration_s": 0.0})
                acc["energy_kwh"] += now["energy_kwh"] - self._mark["energy_kwh"]
                acc["co2_kg"] += now["co2_kg"] - self._mark["co2_kg"]
                acc["duration_s"] += now["duration_s"] - self._mark["duration_s"]
            self._mark = now
        self._phase = phase

    def _stop(self) -> None:
        """Stop the running tracker session (idempotent); totals stay in the recorder."""
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return
        try:
            tracker.stop()  # final measurement + CSV row; our recorder sees it via out()
            final = self._recorder.latest
            self._enter(self._phase, now=final)  # close the open phase
            self._method, self._method_detail = describe_method(tracker, self._recorder.last_data)
            self._recorder.close_session()
            self._mark = None
        except Exception as e:
            self._fail(f"emissions tracker failed to stop cleanly: {type(e).__name__}: {e}")

    def _fail(self, msg: str) -> None:
        self._errors.append(msg)
        _warn(msg + " (training goes on)")
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            try:
                tracker.stop()
            except Exception:
                pass

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not self.enabled:
            return
        self._node_rank = int(getattr(trainer, "node_rank", 0) or 0)
        self._num_nodes = int(getattr(trainer, "num_nodes", 1) or 1)
        self._world_size = int(getattr(trainer, "world_size", 1) or 1)
        self._is_tracker_rank = int(getattr(trainer, "local_rank", 0) or 0) == 0
        if self._is_tracker_rank and self._tracker is None:
            self._start(trainer)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._stop()  # a later stage (test after fit) starts a new session in setup()

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self._push("validation")

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        self._pop()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._enter("train")
        self._phase_stack.clear()
        self._train_start = dict(self._mark) if self._mark else None
        self._train_start_step = trainer.global_step

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._step = trainer.global_step
        self._enter("other")
        self._log(trainer, self._recorder.latest if self._recorder else None, final=True)
        self._gather(trainer, pl_module)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._push("validation")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._pop()

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._push("test")

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._pop()
        self._gather(trainer, pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._step = step = trainer.global_step
        if self._tracker is None or step == self._last_logged_step:
            return
        every = self.log_every_n_steps or getattr(trainer, "log_every_n_steps", 50) or 50
        if step % every == 0:
            self._last_logged_step = step
            self._log(trainer, self._recorder.latest)
        if self.project_at and self._projection is None:
            self._maybe_project(trainer, step, self.project_at)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Lightning calls this for KeyboardInterrupt too (then sys.exit(1)); no collectives here.
        self._interrupted = isinstance(exception, KeyboardInterrupt)
        self._stop()

    # ------------------------------------------------------------------ pieces
    def _push(self, phase: str) -> None:
        self._phase_stack.append(self._phase)
        self._enter(phase)

    def _pop(self) -> None:
        self._enter(self._phase_stack.pop() if self._phase_stack else "other")

    def _log(self, trainer: Any, r: Reading | None, final: bool = False) -> None:
        if r is None or not getattr(trainer, "is_global_zero", True):
            return
        power = r.get("power_w")
        if final and r["duration_s"] > 0:
            power = r["energy_kwh"] * 3.6e6 / r["duration_s"]  # mean over the run
        metrics = {"emissions/energy_kwh": r["energy_kwh"], "emissions/co2_kg": r["co2_kg"]}
        if power is not None:
            metrics["emissions/power_w"] = power
        write_metrics(trainer, metrics)

    def _total_steps(self, trainer: Any) -> float:
        if getattr(trainer, "max_steps", -1) and trainer.max_steps > 0:
            return float(trainer.max_steps)
        try:
            return float(trainer.estimated_stepping_batches)
        except Exception:
            return math.inf

    def _maybe_project(self, trainer: Any, step: int, project_at: float) -> None:
        # This session measures only its own steps: a run resumed at step 500 of 1000 has done none of them at step
        # 501, so the fraction is of the steps this session trains, and the earlier sessions' totals are added.
        total = self._total_steps(trainer)
        first = self._train_start_step
        span = total - first
        if not math.isfinite(total) or span <= 0 or step - first < math.ceil(project_at * span):
            return
        now = self._read()
        if now is None:
            return
        start = self._train_start or {"energy_kwh": 0.0, "co2_kg": 0.0, "duration_s": 0.0}
        if now["energy_kwh"] <= start["energy_kwh"]:
            return  # CodeCarbon skips re-measuring within 50 ms: nothing of training measured yet
        try:
            proj: dict[str, Any] = project(
                now["energy_kwh"],
                now["co2_kg"],
                min((step - first) / span, 1.0),
                elapsed_s=now["duration_s"],
                fixed_energy_kwh=start["energy_kwh"],
                fixed_co2_kg=start["co2_kg"],
                fixed_s=start["duration_s"],
            )
        except ValueError as e:
            self._errors.append(f"projection failed: {e}")
            self._projection = {}
            return
        proj["step"], proj["total_steps"] = step, int(total)
        if self._num_nodes > 1:
            # measured_* is this node's; the whole-run figures assume every node draws alike.
            proj["energy_kwh"] *= self._num_nodes
            proj["co2_kg"] *= self._num_nodes
            proj["extrapolated_to_nodes"] = self._num_nodes
        if self._before_resume:  # already whole-run figures (state_dict extrapolates to the nodes)
            prior = self._before_resume
            proj["energy_kwh"] += prior["energy_kwh"]
            proj["co2_kg"] += prior["co2_kg"]
            if "duration_s" in proj:
                proj["duration_s"] += prior.get("duration_s", 0.0)
            proj["resumed_at_step"] = first
            proj["before_resume"] = {k: prior[k] for k in ("energy_kwh", "co2_kg", "duration_s") if k in prior}
        self._projection = proj
        if getattr(trainer, "is_global_zero", True):
            rank_zero_info(format_projection(proj))
            for lg in getattr(trainer, "loggers", []) or []:
                try:
                    lg.log_metrics(
                        {
                            "emissions/projected_energy_kwh": proj["energy_kwh"],
                            "emissions/projected_co2_kg": proj["co2_kg"],
                        },
                        step=step,
                    )
                except Exception:
                    pass

    def _gather(self, trainer: Any, pl_module: Any) -> None:
        """Collect each node's totals on every rank (a collective: all ranks call it)."""
        if self._world_size <= 1 or not self.enabled:
            return
        import torch

        r = self._read()
        mine = r if self._is_tracker_rank else None  # only the tracker rank's totals are its node's
        vec = torch.tensor(
            [
                0.0 if mine is None else 1.0,
                float(self._node_rank),
                *((0.0, 0.0, 0.0) if mine is None else (mine["energy_kwh"], mine["co2_kg"], mine["duration_s"])),
            ],
            dtype=torch.float64,
            device=getattr(pl_module, "device", "cpu"),
        )
        try:
            rows = trainer.strategy.all_gather(vec).reshape(-1, 5).cpu().tolist()
        except Exception as e:
            self._errors.append(f"could not gather per-node emissions: {e}")
            return
        self._trackers_seen = int(sum(row[0] for row in rows))
        self._other_nodes = {
            int(row[1]): {"energy_kwh": row[2], "co2_kg": row[3], "duration_s": row[4]}
            for row in rows
            if row[0] > 0 and int(row[1]) != self._node_rank
        }

    # ------------------------------------------------------------------ checkpoints
    # A resumed run measures afresh; the checkpoint carries what the run had spent up to it, so
    # summary.json can answer "what did this model cost to train" across interruptions (`cumulative`).
    def state_dict(self) -> dict[str, Any]:
        r = self._read() if self._is_tracker_rank else None
        if r is None:
            return dict(self._before_resume or {})
        nodes = max(self._num_nodes, 1)  # rank 0 measures its node; others are assumed to draw alike
        prior = self._before_resume or {}
        return {
            "energy_kwh": prior.get("energy_kwh", 0.0) + r["energy_kwh"] * nodes,
            "co2_kg": prior.get("co2_kg", 0.0) + r["co2_kg"] * nodes,
            "duration_s": prior.get("duration_s", 0.0) + r["duration_s"],
            "step": self._step,
            "runs": prior.get("runs", 0) + 1,
            **({"extrapolated_to_nodes": nodes} if nodes > 1 else {}),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("energy_kwh") is not None:
            self._before_resume = dict(state_dict)

    # ------------------------------------------------------------------ contract
    def summary(self, final: bool = True) -> dict[str, Any]:
        """The ``emissions`` section of summary.json. ``final`` stops a still-running tracker."""
        if final:
            self._stop()
        out: dict[str, Any] = {}
        r = self._recorder.latest if self._recorder is not None else None
        if not self.enabled:
            return {"status": "disabled"}
        if r is None:
            out["status"] = "failed" if self._errors or self._is_tracker_rank else "not tracked on this rank"
            if self._errors:
                out["error"] = "; ".join(self._errors)
            return out
        node = {
            "node_rank": self._node_rank,
            "energy_kwh": r["energy_kwh"],
            "co2_kg": r["co2_kg"],
            "duration_s": r["duration_s"],
        }
        nodes = [node] + [{"node_rank": k, **v} for k, v in sorted(self._other_nodes.items())]
        energy = sum(n["energy_kwh"] for n in nodes)
        co2 = sum(n["co2_kg"] for n in nodes)
        duration = max(n["duration_s"] for n in nodes)
        out.update(
            energy_kwh=energy,
            co2_kg=co2,
            duration_s=duration,
            power_w=energy * 3.6e6 / duration if duration > 0 else 0.0,
            intensity_g_per_kwh=(co2 / energy * 1000.0) if energy > 0 else None,
            method=self._method,
            method_detail=self._method_detail,
            tracker="online" if self.online else "offline",
            country_iso_code=None if self.online else self.country_iso_code,
            region=self.region,
            pue=self.pue,
            measure_power_secs=self.measure_power_secs,
            phases={k: dict(v) for k, v in self._phases.items() if v["duration_s"] > 0 or v["energy_kwh"] > 0},
            nodes=len(nodes),
            num_nodes=self._num_nodes,
            files=dict(self._files),
            status="complete",
        )
        if len(nodes) > 1 or self._num_nodes > 1:
            out["per_node"] = nodes
        if self._trackers_seen is not None:
            out["trackers"] = self._trackers_seen
        if len(nodes) < self._num_nodes:
            out["status"] = "partial"
            out["missing_nodes"] = self._num_nodes - len(nodes)
        if self._errors:
            out["status"] = "partial"
            out["error"] = "; ".join(self._errors)
        if self._interrupted:
            out["interrupted"] = True
        if self._projection:
            out["projection"] = dict(self._projection)
        if self.estimate:
            out["estimate"] = dict(self.estimate)
        if self._before_resume:
            prior = self._before_resume
            out["cumulative"] = {
                "energy_kwh": prior["energy_kwh"] + energy,
                "co2_kg": prior["co2_kg"] + co2,
                "duration_s": prior["duration_s"] + duration,
                "runs": prior.get("runs", 1) + 1,
                "before_resume": dict(prior),
            }
        try:
            import codecarbon

            out["codecarbon_version"] = codecarbon.__version__
        except Exception:
            pass
        return {k: v for k, v in out.items() if v is not None}


def _check_country(code: str) -> None:
    """Fail at instantiation (before compute) on a country CodeCarbon has no data for."""
    try:
        from codecarbon.input import DataSource

        known = DataSource().get_global_energy_mix_data()
    except Exception:
        return  # cannot check: let the tracker decide
    if str(code).upper() not in known:
        sample = ", ".join(sorted(known)[:12])
        raise ConfigError(
            f"callbacks.emissions.country_iso_code={code!r} is not in CodeCarbon's energy-mix "
            f"data; use an ISO 3166 alpha-3 code such as USA, FRA, DEU, GBR ({sample}, ...)"
        )


def _gpu_ids(trainer: Any) -> list | None:
    """Physical ids of the GPUs this node's ranks use, so NVML ignores other jobs' GPUs."""
    try:
        from lightning.pytorch.accelerators import CUDAAccelerator

        if not isinstance(trainer.accelerator, CUDAAccelerator):
            return None
        ids = [int(i) for i in (trainer.device_ids or [])]
    except Exception:
        return None
    if not ids:
        return None
    cvd = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    if cvd:
        return [cvd[i] for i in ids if i < len(cvd)]
    return ids


# Stop trackers that are still running when the interpreter exits (sys.exit after
# Ctrl-C, an exception outside Lightning's handlers) so emissions.csv gets a final row.
_LIVE: weakref.WeakSet[EmissionsCallback] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for cb in list(_LIVE):
        try:
            cb._stop()
        except Exception:
            pass
