"""Emissions: a real CodeCarbon tracker around tiny Lightning runs (no mocks), the pre-run
estimator (GPT-3's published footprint), and the accelerator table."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lmforge import hardware
from lmforge.callbacks.emissions import EmissionsCallback, EmissionsWarning
from lmforge.emissions.estimate import (
    EstimateError,
    estimate,
    estimate_for_run,
    format_estimate,
    formula_training_flops,
    grid_intensity,
    project,
)

SRC = Path(hardware.__file__).resolve().parents[1]
NO_RAPL = not Path("/sys/class/powercap/intel-rapl").exists()


class Tiny(L.LightningModule):
    """A few linear layers: enough CPU work for CodeCarbon to see."""

    def __init__(self, fail_at: int | None = None, fail_with: type[BaseException] = RuntimeError):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
        self.fail_at, self.fail_with = fail_at, fail_with

    def training_step(self, batch, i):
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise self.fail_with("boom")
        time.sleep(0.005)  # CodeCarbon does not re-measure within 50 ms: keep phases longer than that
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, i):
        time.sleep(0.03)
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def test_step(self, batch, i):
        time.sleep(0.03)
        self.log("test/loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loaders(n: int = 2048):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=g)
    ds = TensorDataset(x, x.sum(1, keepdim=True))
    return DataLoader(ds, batch_size=64), DataLoader(ds, batch_size=256)


def trainer(out: Path, cb: EmissionsCallback, **kw) -> L.Trainer:
    args = dict(
        callbacks=[cb],
        max_steps=40,
        val_check_interval=10,
        limit_val_batches=2,
        limit_test_batches=2,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(out, name="csv"),
        log_every_n_steps=5,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=out,
    )
    args.update(kw)
    return L.Trainer(**args)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """CodeCarbon reads ./.codecarbon.config, ~/.codecarbon.config and CODECARBON_* env vars."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.upper().startswith("CODECARBON_"):
            monkeypatch.delenv(k)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- tracker
def test_real_tracker_records_energy_per_phase(tmp_path):
    out = tmp_path / "run"
    cb = EmissionsCallback(output_dir=out, measure_power_secs=1, project_at=0.25)
    tr = trainer(out, cb)
    model = Tiny()
    train_dl, val_dl = loaders()
    tr.fit(model, train_dl, val_dl)
    tr.test(model, val_dl, verbose=False)
    s = cb.summary()

    assert s["status"] == "complete"
    assert {"energy_kwh", "co2_kg", "duration_s", "power_w", "method", "method_detail", "phases"} <= set(s)
    assert s["energy_kwh"] > 0 and s["co2_kg"] > 0 and s["duration_s"] > 0 and s["power_w"] > 0
    if NO_RAPL:  # this machine: CodeCarbon falls back to its CPU-load model; say so
        assert "no RAPL" in s["method"] and s["method_detail"]["rapl"] is False
    for phase in ("train", "validation", "test"):
        assert s["phases"][phase]["energy_kwh"] > 0, phase
    assert sum(p["energy_kwh"] for p in s["phases"].values()) == pytest.approx(s["energy_kwh"], rel=0.02)

    rows = _csv_rows(out / "emissions.csv")  # CodeCarbon's file: one row per session (fit, test)
    assert len(rows) == 2
    assert sum(float(r["energy_consumed"]) for r in rows) == pytest.approx(s["energy_kwh"], rel=1e-6)
    assert len(_csv_rows(out / "emissions_timeline.csv")) >= 2

    proj = s["projection"]
    assert 0.25 <= proj["fraction_done"] < 0.5 and proj["energy_kwh"] > proj["measured_energy_kwh"] > 0

    logged = _csv_rows(next(out.glob("csv/version_*/metrics.csv")))
    for key in ("emissions/energy_kwh", "emissions/co2_kg", "emissions/power_w"):
        assert any(r.get(key) for r in logged), key


def test_a_resumed_run_projects_the_whole_run_from_its_own_steps(tmp_path):
    """Resumed at step ~40 of 80, the session has trained none of the remaining steps at the next step: its
    projection must scale what it measured by the share of *its* steps done and add what the run spent before (it
    was ~10x low)."""
    out = tmp_path / "run"
    first = EmissionsCallback(output_dir=out, measure_power_secs=1, project_at=None)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=out / "ckpt", save_last=True)
    trainer(out, first, enable_checkpointing=True, callbacks=[first, ckpt]).fit(Tiny(), *loaders())
    first_total = first.summary()["energy_kwh"]

    second = EmissionsCallback(output_dir=out, measure_power_secs=1, project_at=0.25)
    tr = trainer(out, second, max_steps=80)
    tr.fit(Tiny(), *loaders(), ckpt_path=str(out / "ckpt" / "last.ckpt"))
    s = second.summary()
    proj, whole = s["projection"], s["cumulative"]["energy_kwh"]
    resumed_at = torch.load(out / "ckpt" / "last.ckpt", weights_only=False)["global_step"]
    assert proj["resumed_at_step"] == resumed_at > 0 and 0.25 <= proj["fraction_done"] < 0.5
    assert 0 < proj["before_resume"]["energy_kwh"] <= first_total  # what the run spent up to its checkpoint
    # the two sessions train alike: the projection lands near what the whole run really spent
    assert 0.5 * whole < proj["energy_kwh"] < 2 * whole


DDP_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from test_emissions import Tiny, loaders, EmissionsCallback, L
out = sys.argv[1]
cb = EmissionsCallback(output_dir=out, measure_power_secs=1, project_at=None)
tr = L.Trainer(callbacks=[cb], max_steps=20, val_check_interval=5, limit_val_batches=2, accelerator="cpu",
               devices=2, strategy="ddp", logger=False, enable_progress_bar=False, enable_model_summary=False,
               enable_checkpointing=False, default_root_dir=out)
tr.fit(Tiny(), *loaders(1024))
with open(f"{{out}}/summary_rank{{tr.global_rank}}.json", "w") as f:
    json.dump(cb.summary(), f)
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_two_processes_count_one_node_once(tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    s0 = json.loads((out / "summary_rank0.json").read_text())
    s1 = json.loads((out / "summary_rank1.json").read_text())
    assert s0["trackers"] == 1 and s0["nodes"] == 1  # two ranks, one node, one tracker
    assert s1 == {"status": "not tracked on this rank"}
    assert sorted(p.name for p in out.glob("emissions*")) == ["emissions.csv", "emissions_timeline.csv"]
    rows = _csv_rows(out / "emissions.csv")
    assert len(rows) == 1
    assert float(rows[0]["energy_consumed"]) == pytest.approx(s0["energy_kwh"], rel=1e-9)  # not doubled


def test_tracker_failure_warns_and_training_goes_on(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the run folder should be")
    cb = EmissionsCallback(output_dir=blocker, measure_power_secs=1)
    tr = trainer(tmp_path / "run", cb, max_steps=5, limit_val_batches=0, logger=False)
    with pytest.warns(EmissionsWarning, match="training goes on"):
        tr.fit(Tiny(), loaders(512)[0])
    assert tr.global_step == 5
    s = cb.summary()
    assert s["status"] == "failed" and "not_a_dir" in s["error"]
    assert "energy_kwh" not in s  # no placeholder numbers


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_exception_and_ctrl_c_stop_the_tracker_cleanly(tmp_path, exc):
    out = tmp_path / "run"
    cb = EmissionsCallback(output_dir=out, measure_power_secs=1, project_at=None)
    tr = trainer(out, cb, limit_val_batches=0, logger=False)
    handler = signal.getsignal(signal.SIGINT)
    try:
        # Lightning turns Ctrl-C into on_exception + sys.exit(1)
        with pytest.raises(SystemExit if exc is KeyboardInterrupt else RuntimeError):
            tr.fit(Tiny(fail_at=3, fail_with=exc), loaders(512)[0])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a Ctrl-C
    assert cb._tracker is None  # stopped, threads gone
    rows = _csv_rows(out / "emissions.csv")
    assert len(rows) == 1 and float(rows[0]["energy_consumed"]) > 0
    s = cb.summary()
    assert s["energy_kwh"] > 0
    assert s.get("interrupted", False) is (exc is KeyboardInterrupt)


def test_bad_config_fails_before_compute():
    with pytest.raises(ValueError, match="country_iso_code='XYZ'"):
        EmissionsCallback(country_iso_code="XYZ")
    with pytest.raises(ValueError, match="pue"):
        EmissionsCallback(pue=0.5)
    with pytest.raises(ValueError, match="project_at"):
        EmissionsCallback(project_at=1.5)


# --------------------------------------------------------------------------- estimator
def test_estimator_reproduces_gpt3_footprint():
    # Patterson et al. 2021: 10,000 V100 for 14.8 days at 330 W, PUE 1.1, 429 gCO2e/kWh
    # -> 1,287 MWh and 552 tCO2e.
    est = estimate(accelerator_hours=10_000 * 14.8 * 24, power_w=330, pue=1.1, intensity=429)
    assert est.energy_kwh / 1000 == pytest.approx(1287, rel=0.02)
    assert est.co2_kg / 1000 == pytest.approx(552, rel=0.02)
    assert "MWh" in format_estimate(est) and "tCO2e" in format_estimate(est)
    # the compute path: 6 x 175B x 300B = 3.15e23 FLOPs (paper: 3.14e23)
    assert formula_training_flops(175e9, 300e9) == pytest.approx(3.14e23, rel=0.02)
    est2 = estimate(params=175e9, tokens=300e9, accelerator="v100", count=10_000, mfu=0.2, dtype="fp16")
    assert est2.power_w == 300  # the V100's TDP when --power-w is not given
    assert est2.wall_hours == pytest.approx(est2.accelerator_hours / 10_000)


def test_estimate_for_a_cpu_run_uses_codecarbons_numbers():
    est = estimate_for_run(1e6, 1e6, device="cpu", dtype="fp32")
    assert est.accelerator == "cpu" and est.energy_kwh > 0 and est.power_w > 0
    assert est.intensity_g_per_kwh == pytest.approx(grid_intensity("USA"))  # the tracker's default grid
    assert grid_intensity("FRA") < grid_intensity("USA")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "lmforge.emissions.estimate", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_estimator_cli_json_and_bad_input():
    r = _cli("--accelerator-hours", "3552000", "--power-w", "330", "--pue", "1.1", "--intensity", "429", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"flops", "accelerator_hours", "energy_kwh", "co2_kg"} <= set(d)
    assert d["energy_kwh"] == pytest.approx(1.287e6, rel=0.02)
    for bad, needle in [
        (("--params", "-5", "--tokens", "1e9", "--accelerator", "a100", "--mfu", "0.4"), "params"),
        (("--params", "1e9", "--tokens", "1e9", "--accelerator", "tpu9", "--mfu", "0.4"), "known:"),
        (("--accelerator-hours", "10"), "--power-w"),
    ]:
        r = _cli(*bad)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)


def test_projection_scales_the_growing_part_only():
    p = project(1.0, 0.4, 0.1)
    assert p["energy_kwh"] == pytest.approx(10.0) and p["co2_kg"] == pytest.approx(4.0)
    p = project(1.0, 0.4, 0.1, fixed_energy_kwh=0.5, fixed_co2_kg=0.2, elapsed_s=100, fixed_s=50)
    assert p["energy_kwh"] == pytest.approx(5.5) and p["duration_s"] == pytest.approx(550)
    with pytest.raises(EstimateError, match="fraction_done"):
        project(1.0, 0.4, 0.0)


# --------------------------------------------------------------------------- hardware table
def test_accelerator_table_and_device_names():
    assert hardware.lookup("A100-80GB").key == "a100-sxm"
    assert hardware.peak_flops("h100-sxm", "bf16") == pytest.approx(989.5e12)
    assert hardware.peak_flops("h100", "bf16-mixed") == hardware.peak_flops("h100-sxm", "bf16")
    names = {
        "NVIDIA H100 80GB HBM3": "h100-sxm",
        "NVIDIA H200": "h200",
        "NVIDIA H100 PCIe": "h100-pcie",
        "NVIDIA H100 NVL": "h100-nvl",
        "NVIDIA A100-SXM4-40GB": "a100-sxm",
        "NVIDIA A100 80GB PCIe": "a100-pcie",
        "Tesla V100-SXM2-32GB": "v100",
        "Tesla T4": "t4",
        "NVIDIA A10G": "a10g",
        "NVIDIA L40S": "l40s",
        "NVIDIA L4": "l4",
        "AMD Instinct MI300X": "mi300x",
        "NVIDIA GeForce RTX 3090": None,
    }
    for name, key in names.items():
        assert hardware.cuda_device_name_to_key(name) == key, name
    with pytest.raises(ValueError, match="h100-sxm"):
        hardware.lookup("tpu-v9")
    with pytest.raises(ValueError, match="no bf16"):
        hardware.peak_flops("v100", "bf16")


def test_cpu_peak_estimate():
    assert hardware.cpu_flops_per_cycle("fp32", {"avx2", "fma"}) == 32
    assert hardware.cpu_flops_per_cycle("fp32", {"avx2", "fma", "avx512f"}) == 64
    assert hardware.cpu_flops_per_cycle("bf16", {"avx512f", "avx512_bf16"}) == 128
    assert hardware.cpu_flops_per_cycle("bf16", {"avx2", "fma"}) == 32  # no bf16 units: fp32 speed
    assert hardware.cpu_flops_per_cycle("bf16", {"avx512f", "amx_bf16", "amx_tile"}) == 1024
    assert hardware.cpu_peak_flops("fp32", cores=2, clock_hz=2e9, flops_per_cycle=32) == 128e9
    assert hardware.peak_flops("cpu", "fp32") > 1e9  # this machine, from /proc/cpuinfo


def test_pre_run_flops_come_from_the_objectives_own_batch_shapes():
    """The forecast counts what MFU counts: GPT on seq_len tokens; T5 on its encoder input and its shorter
    span-corruption target (6 x params x tokens would overestimate it), without touching training's RNG."""
    from omegaconf import OmegaConf

    from lmforge.emissions.pre_run import planned_flops
    from lmforge.models.gpt import GPT, gpt_forward_flops
    from lmforge.models.t5 import T5, t5_forward_flops
    from lmforge.objectives.clm import PackedCausalBatches
    from lmforge.objectives.seq2seq import NUM_SENTINELS, Seq2SeqLM

    cfg = OmegaConf.create({"data": {"batch_size": 4}, "trainer": {"accumulate_grad_batches": 2}})
    trainer = L.Trainer(
        max_steps=10,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    gpt = GPT(vocab_size=64, max_seq_len=32, n_layer=2, n_head=2, d_model=32)
    assert (
        planned_flops(gpt, PackedCausalBatches(block_len=32), cfg, trainer, token_id=63)
        == 3 * gpt_forward_flops(gpt.config, 4, 32) * 2 * 10
    )

    special = {"pad": 0, "eos": 1, "unk": 2, **{f"sentinel_{i}": 3 + i for i in range(NUM_SENTINELS)}}
    t5 = T5(vocab_size=192, d_model=32, d_kv=8, d_ff=64, n_layer=2, n_head=4)
    builder = Seq2SeqLM(net=t5, optimizer=None, scheduler=None).batch_builder(64, special)
    torch.manual_seed(0)
    expected_next_draw = torch.rand(1)
    torch.manual_seed(0)
    flops = planned_flops(t5, builder, cfg, trainer, token_id=191)
    assert torch.rand(1) == expected_next_draw  # the global RNG is where it was
    assert flops == 3 * t5_forward_flops(t5.config, 4, builder.input_len, builder.target_len) * 2 * 10
    assert builder.target_len < builder.input_len
    six_nd = 6 * sum(p.numel() for p in t5.parameters()) * 4 * 64 * 2 * 10
    assert flops < six_nd
