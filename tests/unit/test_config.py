"""The YAML schema: defaults, strict keys with places, types, ranges, overrides (recipes: test_recipes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqtool.config import (
    Config,
    RNNConfig,
    TransformerConfig,
    config_diff,
    config_from_dict,
    dump_config,
    iter_fields,
    load_config,
)
from seqtool.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_kinds(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "data: {train_src: a, train_tgt: b}\nmodel: {kind: rnn, cell: lstm}\n"))
    assert isinstance(cfg.model, RNNConfig) and cfg.model.cell == "lstm"
    assert cfg.name == "c" and cfg.train.lr == 1e-3
    assert isinstance(Config().model, TransformerConfig)


def test_unknown_key_names_path_line_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  train_src: a\nmodel:\n  kind: transformer\n  dmodel: 512\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "model.dmodel" in err.value.message and f"{path}:5" in err.value.message
    assert err.value.hint == "did you mean 'd_model'?"


def test_key_of_the_other_model_kind_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.cell"):
        load_config(write(tmp_path, "model:\n  kind: transformer\n  cell: gru\n"))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("model: {d_model: big}", "expected an integer"),
        ("model: {d_model: 0}", "must be >= 1"),
        ("model: {dropout: 1.0}", "must be < 1.0"),
        ("model: {d_model: 100, heads: 3}", "not divisible"),
        ("train: {precision: fp8}", "not one of"),
        ("model: {kind: cnn}", "not one of"),
        ("train: {adam_betas: [0.9]}", "adam_betas"),
        ("- a\n- b\n", "mapping"),
        ("data: [1, 2]", "expected a mapping"),
        ("tokenizer: {joint: false}", "joint tokenizer"),
        ("a: !!python/object/apply:os.system ['echo hi']", "not valid YAML"),
        ("model: {d_model: 256\n", "not valid YAML"),
    ],
)
def test_invalid_values(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert needle in err.value.message


def test_set_overrides_typed_and_strict(tmp_path: Path) -> None:
    path = write(tmp_path, "train: {max_steps: 10}\n")
    cfg = load_config(path, ["train.max_steps=25", "model.dropout=0.3", "train.adam_betas=[0.8, 0.9]"])
    assert cfg.train.max_steps == 25 and cfg.model.dropout == 0.3 and cfg.train.adam_betas == [0.8, 0.9]
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.max_step=25"])
    assert "train.max_step" in err.value.message and "--set" in err.value.message
    with pytest.raises(ConfigError, match=r"KEY\.PATH=VALUE"):
        load_config(path, ["train.max_steps"])


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_dump_roundtrip_and_diff() -> None:
    cfg = Config()
    cfg.train.max_steps = 7
    import yaml

    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    other = config_from_dict(yaml.safe_load(dump_config(cfg)))
    other.train.lr = 0.5
    assert config_diff(cfg, other) == ["train.lr: 0.001 -> 0.5"]


def test_every_key_has_help() -> None:
    keys = list(iter_fields())
    assert len(keys) > 40
    assert all(help_text for _, _, help_text in keys)
