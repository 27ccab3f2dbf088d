"""`shopclip train` options: every one is explained, and given options override a saved config."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from shopclip.train.cli import build_config, train_command
from shopclip.train.config import TrainConfig


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command()(train_command)
    return app


def test_every_option_has_help_and_the_docstring_an_example():
    cmd = typer.main.get_command(_app())
    params = [p for p in cmd.params if p.param_type_name == "option" and p.name != "help"]
    assert len(params) == len(inspect.signature(train_command).parameters) - 1  # all but CATALOG
    for p in params:
        assert p.help and len(p.help) > 15, p.name
    assert "Example: shopclip train" in (train_command.__doc__ or "")
    result = CliRunner().invoke(_app(), ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--lock" in result.output and "--grad-cache-chunk" in result.output


def test_given_options_override_the_config_file(tmp_path):
    base = TrainConfig(catalog="a.jsonl", out="runs/a", epochs=7, lr=0.5)
    base.save(tmp_path / "config.yaml")
    loaded = TrainConfig.load(tmp_path / "config.yaml")
    assert loaded == base
    cfg = build_config(loaded, None, Path("runs/b"), {"epochs": 3, "lr": None, "fn_signals": ["group"]},
                       {"variants": [["title"]], "full_p": None})
    assert (cfg.catalog, cfg.out, cfg.epochs, cfg.lr, cfg.fn_signals) == ("a.jsonl", "runs/b", 3, 0.5, ["group"])
    assert cfg.text.variants == [["title"]] and cfg.text.full_p == base.text.full_p
    with pytest.raises(typer.BadParameter):
        build_config(TrainConfig(), None, None, {}, {})


def test_bad_values_are_reported_as_usage_errors(tmp_path):
    result = CliRunner().invoke(_app(), ["x.jsonl", "--lock", "heads", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "lock must be one of" in result.output
    result = CliRunner().invoke(_app(), ["x.jsonl", "--batch-schedule", "5:64,2:128"])
    assert result.exit_code == 2 and "ascending" in result.output


def test_harder_training_options_reach_the_config_and_bad_values_are_refused(tmp_path):
    cfg = build_config(TrainConfig(), Path("c.jsonl"), None, {"batch_sampler": "leaf", "hard_beta": 4.0,
                                                             "i2i_weight": 0.3, "i2i_positives": "leaf"}, {})
    assert (cfg.batch_sampler, cfg.hard_beta, cfg.i2i_weight, cfg.i2i_positives) == ("leaf", 4.0, 0.3, "leaf")
    result = CliRunner().invoke(_app(), ["x.jsonl", "--batch-sampler", "knn", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "batch_sampler must be one of" in result.output
    result = CliRunner().invoke(_app(), ["x.jsonl", "--i2i-positives", "group", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "i2i_positives must be one of" in result.output
    result = CliRunner().invoke(_app(), ["x.jsonl", "--sim-dim", "256", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "sim_dim needs i2i_weight > 0" in result.output
