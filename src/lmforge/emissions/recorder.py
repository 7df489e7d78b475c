"""The CodeCarbon output handler through which lmforge sees live totals, and the timeline CSV it writes.

CodeCarbon calls an output handler's ``live_out`` after every periodic measurement (with
``api_call_interval=1``) and ``out`` on ``flush()``/``stop()``, each time with the tracker's cumulative
totals for the session. The recorder adds earlier sessions' totals (fit, then test, ...), derives the
power over each interval, and appends a row to ``emissions_timeline.csv`` whenever energy moved.
"""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path
from typing import Any

TIMELINE_FIELDS = (
    "session",
    "time_s",
    "duration_s",
    "step",
    "phase",
    "energy_kwh",
    "co2_kg",
    "power_w",
    "cpu_energy_kwh",
    "gpu_energy_kwh",
    "ram_energy_kwh",
)


class Reading(dict):
    """Cumulative totals at one instant (over all sessions of this callback)."""


def make_recorder(callback: Any, timeline_path: Path):
    """A CodeCarbon output handler; ``callback`` supplies the clock origin (``_t0``), step and phase."""
    from codecarbon.output_methods.base_output import BaseOutput

    class _Recorder(BaseOutput):
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.latest: Reading | None = None
            self.prev: tuple[float, float] | None = None  # (time, energy) of previous sample
            self.path = timeline_path
            self.base = {"energy_kwh": 0.0, "co2_kg": 0.0, "cpu": 0.0, "gpu": 0.0, "ram": 0.0, "duration_s": 0.0}
            self.session = 0
            self.last_data = None

        def _record(self, total) -> None:
            now = time.perf_counter()
            if callback._t0 is None:
                callback._t0 = now  # timeline clock starts at the first sample
            b = self.base
            r = Reading(
                session=self.session,
                time_s=now - callback._t0,
                step=callback._step,
                phase=callback._phase,
                energy_kwh=b["energy_kwh"] + float(total.energy_consumed or 0.0),
                co2_kg=b["co2_kg"] + float(total.emissions or 0.0),
                cpu_energy_kwh=b["cpu"] + float(total.cpu_energy or 0.0),
                gpu_energy_kwh=b["gpu"] + float(total.gpu_energy or 0.0),
                ram_energy_kwh=b["ram"] + float(total.ram_energy or 0.0),
                session_duration_s=float(total.duration or 0.0),
                duration_s=b["duration_s"] + float(total.duration or 0.0),  # tracked time only
            )
            with self.lock:
                # flush() right after a measurement re-reports the same totals: only a
                # sample whose energy moved starts a new power interval / timeline row.
                changed = self.prev is None or r["energy_kwh"] > self.prev[1]
                if self.prev is None:
                    r["power_w"] = None  # first sample of a session: no interval yet
                elif changed:
                    r["power_w"] = (r["energy_kwh"] - self.prev[1]) * 3.6e6 / max(now - self.prev[0], 1e-6)
                else:
                    r["power_w"] = self.latest.get("power_w") if self.latest else None
                if changed:
                    self.prev = (now, r["energy_kwh"])
                self.latest = r
                self.last_data = total
                if changed:
                    self._write(r)

        def _write(self, r: Reading) -> None:
            try:
                new = not self.path.exists()
                with open(self.path, "a", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=TIMELINE_FIELDS, extrasaction="ignore")
                    if new:
                        w.writeheader()
                    w.writerow(
                        {k: (f"{v:.9g}" if isinstance(v, float) else ("" if v is None else v)) for k, v in r.items()}
                    )
            except OSError:
                pass  # the timeline is a convenience; totals live in memory and emissions.csv

        def out(self, total, delta) -> None:
            self._record(total)

        def live_out(self, total, delta) -> None:
            self._record(total)

        def close_session(self) -> None:
            with self.lock:
                if self.latest is not None:
                    self.base = {
                        "energy_kwh": self.latest["energy_kwh"],
                        "co2_kg": self.latest["co2_kg"],
                        "cpu": self.latest["cpu_energy_kwh"],
                        "gpu": self.latest["gpu_energy_kwh"],
                        "ram": self.latest["ram_energy_kwh"],
                        "duration_s": self.latest["duration_s"],
                    }
                self.session += 1
                self.prev = None

    return _Recorder()
