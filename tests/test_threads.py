"""threads=auto: torch's CPU threads are the cores other work leaves free (lmforge/threads.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import TINY, run_train

from lmforge import threads
from lmforge.errors import ConfigError
from lmforge.threads import busy_cores, choose_threads

SPIN = "import os; os.sched_setaffinity(0, {%d}); open(%r, 'w').close()\nwhile True: pass"


@pytest.fixture
def spinning_core(tmp_path):
    """A process holding the first core of this process's CPU set: another user's CPU-bound job."""
    cpu = min(os.sched_getaffinity(0))
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", SPIN % (cpu, str(ready))])
    while not ready.exists():
        assert proc.poll() is None
        time.sleep(0.01)
    yield cpu
    proc.kill()
    proc.wait()


@pytest.fixture
def no_omp(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_exported", None)


def test_a_core_another_process_spins_on_counts_as_busy(spinning_core):
    assert busy_cores({spinning_core}, seconds=0.3) > 0.8


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_auto_leaves_the_busy_core_to_its_owner(spinning_core, no_omp):
    cores = len(os.sched_getaffinity(0))
    choice = choose_threads("auto", on_gpu=False, processes_here=1)
    assert choice.threads <= cores - 1 and "busy with other work" in choice.reason
    assert choose_threads("auto", on_gpu=False, processes_here=cores).threads == 1  # never below one


def test_a_number_and_omp_num_threads_win_over_auto(monkeypatch, no_omp):
    assert choose_threads(3, on_gpu=False, processes_here=1).threads == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads("auto", on_gpu=False, processes_here=1).threads == 2
    # ...but not the value an earlier run in this process exported for its ranks (a multirun re-decides)
    monkeypatch.setattr(threads, "_exported", "2")
    assert choose_threads("auto", on_gpu=False, processes_here=1).reason.startswith("auto")


@pytest.mark.parametrize("bad", [0, -1, "two", True, 1.5])
def test_a_bad_setting_is_refused(bad):
    with pytest.raises(ConfigError, match="threads=.* must be auto or a positive integer"):
        choose_threads(bad, on_gpu=False, processes_here=1)


def test_a_bad_setting_stops_train_py_before_compute(text_corpus):
    proc = run_train([*TINY, "data=text", f"data.path={text_corpus}", "threads=0", "logger=csv"])
    assert proc.returncode == 2 and "threads=0 must be auto or a positive integer" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
