"""`seqtool eval --metrics` against sacrebleu itself, and `recipes/demo.sh` (syntax, and a real 2-step run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import yaml

from tests.cli.test_cli import assert_user_error, seqtool

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "recipes" / "demo.sh"


@pytest.fixture(scope="module")
def hyp_ref(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A poor system (each reference's first three words, one line left empty) and the references."""
    refs = tiny_corpus["test.de"].read_text(encoding="utf-8").splitlines()
    hyps = [" ".join(r.split()[:3]) for r in refs]
    hyps[5] = ""
    path = tmp_path_factory.mktemp("eval") / "hyp.de"
    path.write_text("\n".join(hyps) + "\n", encoding="utf-8")
    return path, tiny_corpus["test.de"]


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_eval_metrics_chrf_prints_only_chrf(hyp_ref: tuple[Path, Path]) -> None:
    hyp, ref = hyp_ref
    result = seqtool("eval", "--hyp", str(hyp), "--ref", str(ref), "--metrics", "chrf")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert len(out) == 2, result.stdout  # the score line and its signature, nothing else
    chrf = sacrebleu.CHRF()
    expected = chrf.corpus_score(lines(hyp), [lines(ref)])
    assert out[0] == str(expected) and out[0].startswith("chrF2 = ")
    assert out[1] == f"  signature: {chrf.get_signature()}"
    assert "BLEU" not in result.stdout and "TER" not in result.stdout


def test_eval_metrics_json_has_exactly_the_asked_metrics_with_sacrebleus_scores(hyp_ref: tuple[Path, Path]) -> None:
    hyp, ref = hyp_ref
    hyps, refs = lines(hyp), [lines(ref)]
    result = seqtool("eval", "--hyp", str(hyp), "--ref", str(ref), "--metrics", "bleu,ter", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"BLEU", "TER"}
    bleu, ter = sacrebleu.BLEU(), sacrebleu.TER()
    assert data["BLEU"]["score"] == pytest.approx(bleu.corpus_score(hyps, refs).score, abs=1e-4)
    assert data["TER"]["score"] == pytest.approx(ter.corpus_score(hyps, refs).score, abs=1e-4)
    assert data["BLEU"]["signature"] == str(bleu.get_signature())
    assert data["TER"]["signature"] == str(ter.get_signature())
    assert 0.0 < data["BLEU"]["score"] < 100.0 and data["TER"]["score"] > 0.0  # a real, imperfect score
    # order, case and spaces in the list do not matter; the text output follows the list's order
    text = seqtool("eval", "--hyp", str(hyp), "--ref", str(ref), "--metrics", " TER , chrf ")
    assert text.returncode == 0, text.stderr
    heads = [line.split(" = ")[0] for line in text.stdout.splitlines() if not line.startswith("  ")]
    assert heads == ["TER", "chrF2"]


@pytest.mark.parametrize(("metrics", "needle"), [("bleu,rouge", "rouge"), ("meteor", "meteor"), ("", "metric")])
def test_eval_unknown_metric_is_a_one_line_error(hyp_ref: tuple[Path, Path], metrics: str, needle: str) -> None:
    hyp, ref = hyp_ref
    result = seqtool("eval", "--hyp", str(hyp), "--ref", str(ref), "--metrics", metrics)
    assert_user_error(result, "unknown metric", needle, "bleu, chrf, ter")
    assert result.stdout == ""


def test_demo_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(DEMO)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text = DEMO.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert "recipes/demo-l10n-en-de.yaml" in text and (REPO / "recipes" / "demo-l10n-en-de.yaml").is_file()


def test_demo_script_runs_end_to_end_for_two_steps(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    """The real script, from the repository root, through its SEQTOOL and RUN variables.

    demo.sh takes only SEQTOOL (the command) and RUN (the run directory) from the environment; its config, training
    data and test files are fixed. So SEQTOOL is a wrapper that appends, to `train`, --set overrides for 2 steps of a
    tiny model on the tiny corpus, and to `translate`, greedy search with short outputs on one thread. The script's
    own steps then all run for real: train, translate the 1,000 test sentences, score them, print the examples.
    """
    run = tmp_path / "demo-run"
    train_sets = {
        "data.train_src": tiny_corpus["train.en"],
        "data.train_tgt": tiny_corpus["train.de"],
        "data.dev_src": tiny_corpus["dev.en"],
        "data.dev_tgt": tiny_corpus["dev.de"],
        "tokenizer.vocab_size": 400,
        "model.d_model": 32,
        "model.heads": 2,
        "model.ffn_dim": 64,
        "model.encoder_layers": 1,
        "model.decoder_layers": 1,
        "train.max_steps": 2,
        "train.max_minutes": 0,
        "train.batch_tokens": 800,
        "train.threads": 1,
        "train.device": "cpu",
        "decode.max_len_a": 0,
        "decode.max_len_b": 3,
    }
    sets = " ".join(f"--set {key}={value}" for key, value in train_sets.items())
    wrapper = tmp_path / "seqtool-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        'cmd="$1"; shift\n'
        'case "$cmd" in\n'
        f'  train) exec "{sys.executable}" -m seqtool train "$@" {sets} ;;\n'
        f'  translate) exec "{sys.executable}" -m seqtool translate "$@" --beam 1 --threads 1 ;;\n'
        f'  *) exec "{sys.executable}" -m seqtool "$cmd" "$@" ;;\n'
        "esac\n",
        encoding="utf-8",
    )
    wrapper.chmod(0o755)
    assert shutil.which("bash") and shutil.which("paste")
    env = {**os.environ, "SEQTOOL": str(wrapper), "RUN": str(run)}
    result = subprocess.run(["bash", str(DEMO)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "finished at step 2 (max_steps)" in log
    stored = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert stored["name"] == "demo-l10n-en-de" and stored["model"]["d_model"] == 32  # the demo recipe, overridden
    hyps = (run / "test.hyp.de").read_text(encoding="utf-8").split("\n")
    assert len(hyps) == 1001 and hyps[-1] == ""  # one line per test sentence
    out = result.stdout
    assert "== test set (data/l10n-en-de/test.*, 1000 sentences), beam 5 ==" in out
    assert "BLEU = " in out and "chrF2 = " in out and "TER = " in out and "signature: nrefs:1" in out
    examples = out.split("examples:\n", 1)[1].splitlines()
    assert [line[:7] for line in examples[:3]] == ["  en:  ", "  out: ", "  ref: "]
    assert len([line for line in examples if line.startswith("  en:  ")]) == 5
    assert examples[-1].startswith("demo wall time: ") and examples[-1].endswith(" s")
