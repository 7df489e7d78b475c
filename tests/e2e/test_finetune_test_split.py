"""Fine-tuning runs with a test split, as a user runs them: `python train.py model=llama_cls data=classification
data.test_fraction=...` scores best.ckpt on the test split after fit (test/acc, test/f1, test/loss in summary.json),
exports to transformers' LlamaForSequenceClassification with the same logits, and `python -m lmforge.evaluate`
gives the run's test metrics again; an SFT run with test=true reports test/exact_match."""

from __future__ import annotations

import json

import pytest
from conftest import run_dir_from_output, run_train
from test_classification_e2e import TINY_CLS, check_export, write_task
from test_evaluate import run_evaluate
from test_sft_e2e import SFT_TINY

pytestmark = pytest.mark.slow  # whole train.py runs: ~45 s for the classifier's, ~30 s for SFT's

LLAMA_CLS = ["model=llama_cls", "model.net.d_ff=64", "model.net.n_kv_head=1", *TINY_CLS]


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama_cls")
    train, val = write_task(folder)
    proc = run_train(
        [*LLAMA_CLS, "data=classification", f"data.path={train}", f"data.val_path={val}", "data.test_fraction=0.2",
         f"hydra.run.dir={folder / 'run'}"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = run_dir_from_output(proc.stdout)
    return run_dir, json.loads((run_dir / "summary.json").read_text()), proc


def test_llama_classifier_scores_best_ckpt_on_the_test_split(llama_run):
    run_dir, s, proc = llama_run
    assert s["status"] == "completed" and s["model"] == "llama_cls"
    assert s["data"]["test_examples"] == 40 and s["data"]["train_examples"] == 160  # 20% of the training file
    assert s["data"]["val_examples"] == 40  # data.val_path: untouched by the test split
    test = s["test"]
    assert test["checkpoint"] == "checkpoints/best.ckpt" and test["step"] > 0
    for key in ("test/acc", "test/f1", "test/loss"):
        assert 0 <= s["metrics"][key] == test["metrics"][key], key
    assert "val/acc" in s["metrics"]  # the final validation's metrics are kept beside the test's
    assert test["unigram_test_loss"] == s["baseline"]["class_prior_test_loss"] > 0
    assert "test/acc" in proc.stdout and f"from best.ckpt (step {test['step']})" in proc.stdout
    header = (run_dir / "csv/metrics.csv").read_text().splitlines()[0].split(",")
    assert "test/acc" in header and "test/f1" in header  # the loggers got them too


def test_llama_classifier_exports_to_llama_for_sequence_classification(llama_run, tmp_path):
    run_dir, _, _ = llama_run
    check_export(run_dir, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]


def test_evaluate_gives_the_classifier_its_test_metrics_again(llama_run, tmp_path):
    run_dir, s, _ = llama_run
    out = tmp_path / "eval.json"
    proc = run_evaluate([str(run_dir), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["split"] == "test" and result["checkpoint"]["path"].endswith("checkpoints/best.ckpt")
    for key in ("test/acc", "test/f1", "test/loss"):
        assert result["metrics"][key] == pytest.approx(s["metrics"][key], abs=1e-5), key
    assert result["data"]["test_examples"] == 40


def test_sft_run_with_test_true_reports_test_exact_match():
    args = [a for a in SFT_TINY if not a.startswith("trainer.max_steps=")]
    proc = run_train([*args, "trainer.max_steps=10", "data.test_fraction=0.1", "test=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((run_dir_from_output(proc.stdout) / "summary.json").read_text())
    assert {"test/loss", "test/ppl", "test/exact_match"} <= set(s["metrics"])
    assert 0 <= s["metrics"]["test/exact_match"] <= 1 and s["data"]["test_examples"] == 20
    assert s["test"]["unigram_test_loss"] == s["baseline"]["unigram_test_loss"] > 0


def test_bad_test_settings_stop_a_fine_tuning_run_before_compute(tmp_path):
    train, val = write_task(tmp_path)
    base = [*LLAMA_CLS, "data=classification", f"data.path={train}", "logger=none"]
    proc = run_train([*base, "data.test_fraction=1.5"])
    assert proc.returncode == 2 and "data.test_fraction=1.5 must be at least 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_train([*base, f"data.test_path={tmp_path / 'missing.jsonl'}"])
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_train([*base, "test=true"])
    assert proc.returncode == 2 and "this run has none" in proc.stderr
