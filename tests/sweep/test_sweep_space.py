"""Sweep configuration without running trials: the search space, the sweep spec composed from
conf/sweep.yaml, the W&B sweep translation (checked with W&B's own code, offline), the best trial
as an experiment config."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser

from lmforge.errors import ConfigError
from lmforge.sweep.space import format_override, format_value, parse_param
from lmforge.sweep.spec import build_spec, check_same_sweep, is_sweep_override
from lmforge.sweep.summary import experiment_name, experiment_yaml
from lmforge.sweep.wandb_sweep import agent_args, sweep_config, wandb_parameter


def compose_sweep(*overrides: str, tmp_path: Path | None = None):
    """sweep.py's composed config for `python sweep.py OVERRIDES` (HydraConfig set as in the app)."""
    extra = [f"sweep.dir={tmp_path / 'sweep'}"] if tmp_path else []
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("sweep", overrides=[*overrides, *extra], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def sweep_spec(*overrides: str, tmp_path: Path | None = None):
    """The SweepSpec sweep.py would build for `python sweep.py OVERRIDES`."""
    return build_spec(compose_sweep(*overrides, tmp_path=tmp_path), HydraConfig.get(), REPO / "train.py")


def test_hydra_sweep_grammar_becomes_typed_parameters():
    lr = parse_param("model.optimizer.lr", "tag(log, interval(1e-4, 1e-2))")
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    warmup = parse_param("model.scheduler.warmup_steps", "int(interval(0, 200))")
    assert (warmup.kind, warmup.low, warmup.high, warmup.log) == ("int", 0, 200, False)
    layers = parse_param("model.net.n_layer", "range(2, 8, 2)")
    assert layers.kind == "int" and layers.grid() == [2, 4, 6]  # stop excluded, as in Python
    model = parse_param("model", "choice(gpt_tiny, gpt)", groups={"model"})
    assert model.kind == "choice" and model.is_group and model.grid() == ["gpt_tiny", "gpt"]
    assert parse_param("data.batch_size", "16,32").choices == (16, 32)  # the -m short form


@pytest.mark.parametrize(
    "expr, fragment",
    [
        ("0.001", "single value"),
        ("interval(1e-2, 1e-4)", "low < high"),
        ("tag(log, interval(0, 1))", "low > 0"),
        ("choice(", "does not parse"),
    ],
)
def test_bad_ranges_name_the_key_and_the_grammar(expr, fragment):
    with pytest.raises(ConfigError, match=fragment) as e:
        parse_param("model.optimizer.lr", expr)
    assert "sweep.params.model.optimizer.lr" in str(e.value)


def test_a_continuous_interval_has_no_grid():
    with pytest.raises(ConfigError, match="grid needs a finite set"):
        parse_param("model.optimizer.lr", "interval(0.1, 0.2)").grid()


@pytest.mark.parametrize("value", [0.0012520653814999472, 3, True, None, "gpt_tiny", "a b", "1e-3", "x=y", "it's"])
def test_sampled_values_round_trip_through_hydras_override_parser(value):
    parsed = OverridesParser.create().parse_overrides([format_override("k", value)])[0].value()
    assert parsed == value and type(parsed) is type(value)


def test_spec_from_sweep_yaml_passes_other_overrides_to_every_trial(tmp_path):
    spec = sweep_spec(
        "hparams_search=gpt_lr",
        "model=gpt_tiny",
        "data.seq_len=64",
        "trainer.max_steps=15",
        "sweep.n_trials=3",
        tmp_path=tmp_path,
    )
    assert spec.name == "gpt_lr" and spec.n_trials == 3 and spec.backend == "optuna"
    assert [p.key for p in spec.space] == ["model.optimizer.lr", "model.scheduler.warmup_steps"]
    # gpt_lr's own trainer.max_steps=300 gives way to the command line's; sweep.* never reaches a trial
    assert spec.trial_overrides == [
        "trainer.val_check_interval=50",
        "model=gpt_tiny",
        "data.seq_len=64",
        "trainer.max_steps=15",
    ]
    assert is_sweep_override("hydra.run.dir=x") and not is_sweep_override("hydra.searchpath=[file://x]")


def test_a_typo_in_the_space_stops_before_any_trial(tmp_path):
    with pytest.raises(ConfigError, match="no key 'model.optimzer.lr'"):
        sweep_spec("hparams_search=gpt_lr", "+sweep.params.model.optimzer.lr='interval(0.1, 0.2)'", tmp_path=tmp_path)


def test_a_bad_shared_value_stops_before_any_trial(tmp_path):
    with pytest.raises(ConfigError, match="data.seq_len=128 is longer"):
        sweep_spec("hparams_search=gpt_lr", "model=gpt_tiny", "data.seq_len=128", tmp_path=tmp_path)


def test_a_sweep_folder_refuses_a_different_command(tmp_path):
    check_same_sweep(sweep_spec("hparams_search=gpt_lr", "trainer.max_steps=15", tmp_path=tmp_path))
    check_same_sweep(
        sweep_spec("hparams_search=gpt_lr", "trainer.max_steps=15", "sweep.n_trials=50", tmp_path=tmp_path)
    )  # a bigger budget is the same sweep
    with pytest.raises(ConfigError, match="holds a different sweep.*trial_overrides"):
        check_same_sweep(sweep_spec("hparams_search=gpt_lr", "trainer.max_steps=30", tmp_path=tmp_path))


def _optuna_distribution(p, grid=False):
    """The distribution the Optuna backend samples `p` from (what _suggest asks the trial for)."""
    from lmforge.sweep.optuna_backend import _suggest

    study = optuna.create_study()
    trial = study.ask()
    _suggest(trial, p, grid)
    return trial.distributions[p.key]


def test_wandb_sweep_config_matches_the_optuna_search_space(tmp_path):
    """W&B's own converter (W&B sweep parameter -> Optuna distribution) must give back exactly the
    distributions the Optuna backend samples: the two backends search the same space."""
    from wandb.sdk.sweeps.scheduler.optuna import sweep_parameter_to_distribution

    spec = sweep_spec("hparams_search=gpt_lr", "sweep.pruner.name=hyperband", tmp_path=tmp_path)
    config = sweep_config(spec)
    assert config["method"] == "bayes" and config["metric"] == {"name": "val/loss", "goal": "minimize"}
    assert config["early_terminate"]["type"] == "hyperband"
    assert config["parameters"]["model.optimizer.lr"] == {
        "distribution": "log_uniform_values",
        "min": 1e-4,
        "max": 1e-2,
    }
    for p in [
        *spec.space,
        parse_param("d", "choice(16, 32)"),
        parse_param("x", "interval(0.0, 0.5)"),
        parse_param("n", "range(2, 9, 2)"),
        parse_param("b", "tag(log, int(interval(8, 64)))"),
    ]:
        assert sweep_parameter_to_distribution(wandb_parameter(p)) == _optuna_distribution(p), p.key


def test_wandb_agent_arguments_are_hydra_overrides_of_the_train_config(tmp_path):
    """What an agent appends (W&B's own formatting of sampled values) composes with train.py's config."""
    spec = sweep_spec("hparams_search=gpt_size", "sweep.wandb.method=grid", tmp_path=tmp_path)
    config = sweep_config(spec)
    assert config["method"] == "grid" and config["parameters"]["model"] == {"values": ["gpt_tiny", "gpt"]}
    cmd = config["command"]
    assert cmd[:3] == ["${env}", "${interpreter}", "${program}"] and cmd[-1] == "${args_no_hyphens}"
    assert f"hydra.run.dir={spec.dir}/trial_${{oc.env:WANDB_RUN_ID}}" in cmd
    sampled = {k: v["values"][-1] for k, v in config["parameters"].items()}
    args = agent_args(sampled)
    assert "model=gpt" in args and "model.optimizer.lr=0.003" in args
    fixed = [c for c in cmd[3:] if not c.startswith(("${", "hydra."))]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*fixed, *args])
    assert cfg.model.net.n_layer == 4 and cfg.model.optimizer.lr == 0.003 and cfg.data.batch_size == 32
    assert cfg.model.optimizer.weight_decay == 0.3 and cfg.trainer.max_steps == 300


def test_best_trial_as_an_experiment_composes_like_its_command(tmp_path):
    spec = sweep_spec("hparams_search=gpt_size", "data=text", "data.path=/some/corpus", "debug=fast", tmp_path=tmp_path)
    best = {
        "number": 3,
        "value": 4.2,
        "overrides": [format_override("model", "gpt_tiny"), format_override("model.optimizer.lr", 0.003)],
    }
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / f"{experiment_name(spec)}.yaml").write_text(experiment_yaml(spec, best))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        from_command = compose("train", overrides=spec.trial_overrides + best["overrides"])
        from_experiment = compose(
            "train", overrides=[f"hydra.searchpath=[file://{tmp_path}]", f"experiment={experiment_name(spec)}"]
        )
    assert from_experiment == from_command
    assert from_experiment.model.net.n_layer == 2 and from_experiment.model.optimizer.lr == 0.003
    assert from_experiment.trainer.log_every_n_steps == 1  # from debug=fast
    assert from_experiment.trainer.max_steps == 300  # gpt_size's value overrides beat debug=fast's, as in the command


def test_sweep_config_records_its_identity(tmp_path):
    spec = sweep_spec("hparams_search=gpt_lr", tmp_path=tmp_path)
    check_same_sweep(spec)
    saved = json.loads((spec.dir / "sweep.json").read_text())
    assert saved["space"]["model.optimizer.lr"] == {"kind": "float", "low": 1e-4, "high": 1e-2, "log": True}
    assert format_value(1e-4) == "0.0001"


def test_wandb_backend_without_a_key_writes_the_sweep_config_and_runs_nothing(tmp_path, caplog):
    """sweep.py's W&B path up to where it would contact W&B: the config file and the commands to run."""
    import logging

    import yaml

    from lmforge.sweep.runner import run_sweep

    cfg = compose_sweep("hparams_search=gpt_lr", "sweep.backend=wandb", "sweep.wandb.create=false", tmp_path=tmp_path)
    spec = build_spec(cfg, HydraConfig.get(), REPO / "train.py")
    with caplog.at_level(logging.INFO, logger="lmforge.sweep"):
        result = run_sweep(cfg, HydraConfig.get(), REPO / "train.py")
    assert result["status"] == "created"
    written = yaml.safe_load((spec.dir / "wandb_sweep.yaml").read_text())
    assert written == sweep_config(spec)
    assert "wandb sweep --project lmforge" in caplog.text and "wandb agent --count 20" in caplog.text
    assert not list(spec.dir.glob("trial_*"))
