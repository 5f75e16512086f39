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


# several corpora and dev sets (data.train, data.dev)
TWO = "data:\n  train:\n    - {name: a, src: a.en, tgt: a.de, weight: 3}\n    - {name: b, src: b.en, tgt: b.de}\n"


def test_several_corpora_and_the_single_pair_form(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, TWO))
    assert [(c.name, c.src, c.weight) for c in cfg.data.corpora()] == [("a", "a.en", 3.0), ("b", "b.en", 1.0)]
    assert cfg.data.languages() == [] and cfg.data.dev_sets() == []
    single = load_config(write(tmp_path, "data: {train_src: x.en, train_tgt: x.de, dev_src: d.en, dev_tgt: d.de}"))
    assert [(c.name, c.src, c.tgt, c.weight) for c in single.data.corpora()] == [("train", "x.en", "x.de", 1.0)]
    assert [(d.name, d.src) for d in single.data.dev_sets()] == [("dev", "d.en")]
    again = config_from_dict(__import__("yaml").safe_load(dump_config(cfg)))  # the resolved config reads back
    assert again == cfg


@pytest.mark.parametrize(
    ("text", "needle", "line"),
    [
        (TWO.replace("weight: 3", "weight: 0"), "data.train[0].weight", 3),
        (TWO.replace("name: b", "name: a"), "data.train[1].name", 4),
        (TWO.replace("name: b, ", ""), "data.train[1].name", 4),
        (TWO.replace("tgt: b.de", "tgt: ''"), "data.train[1].tgt", 4),
        (TWO.replace("name: a,", "name: 'a b',"), "not a valid name", 3),
        (TWO + "  train_src: x\n", "either data.train or data.train_src", None),
        (TWO.replace("weight: 3}", "weight: 3, tgt_lang: fr}"), "data.train[1].tgt_lang", 4),
        (TWO.replace("weight: 3}", "weight: 3, tgt_lang: 'f r'}"), "not a language code", 3),
        (TWO + "  dev:\n    - {name: d, src: d.en, tgt: d.de, tgt_lang: fr}\n", "training corpora have none", 6),
        (TWO + "  select_on: d\n", "data.select_on", 5),
        (TWO + "  dev:\n    - {name: d, src: d.en, tgt: d.de, bleu: 1}\n", "data.dev[0].bleu", 6),
        (TWO + "  train_tgt: x\n  dev_src: y\n  dev_tgt: z\n", "either data.train", None),
    ],
)
def test_corpus_errors_name_the_key_and_line(tmp_path: Path, text: str, needle: str, line: int | None) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in err.value.message
    if line is not None:
        assert f"{path}:{line}" in err.value.message


def test_tags_on_all_corpora_and_dev_sets(tmp_path: Path) -> None:
    text = TWO.replace("weight: 3}", "weight: 3, tgt_lang: de}").replace("b.de}", "b.de, tgt_lang: fr}")
    cfg = load_config(write(tmp_path, text + "  dev:\n    - {name: d, src: d.en, tgt: d.de, tgt_lang: de}\n"))
    assert cfg.data.languages() == ["de", "fr"] and cfg.data.select_on == "mean"
    with pytest.raises(ConfigError, match=r"data\.dev\[0\]\.tgt_lang.*one of the training corpora's languages: de, fr"):
        load_config(write(tmp_path, text + "  dev:\n    - {name: d, src: d.en, tgt: d.de}\n"))
    with pytest.raises(ConfigError, match=r"data\.dev_src.*needs one of the training corpora's languages"):
        load_config(write(tmp_path, text + "  dev_src: d.en\n  dev_tgt: d.de\n"))
