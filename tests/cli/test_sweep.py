"""tests/benchmarks/sweep.py, the issue-18 sweep: its grid, its refusal of bad input, and a real two-run sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.helpers import write_config

SWEEP = Path(__file__).resolve().parents[1] / "benchmarks" / "sweep.py"


def sweep(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SWEEP), *args], capture_output=True, text=True, timeout=600)


def test_the_grid_all_combinations_or_one_key_at_a_time(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_corpus, "transformer")
    grid = ["--grid", "model.dropout=0.1,0.3", "--grid", "train.adam_betas=[0.9,0.98],[0.9,0.999]"]
    every = sweep(str(config), *grid, "--seeds", "1,2", "--out", str(tmp_path / "s"), "--dry-run")
    assert every.returncode == 0, every.stderr
    names = [line.split(" ", 1)[0] for line in every.stdout.splitlines()]
    assert len(names) == len(set(names)) == 8  # 2 × 2 points × 2 seeds
    assert json.loads(every.stdout.splitlines()[1].split(" ", 1)[1]) == {
        "model.dropout": "0.1", "train.adam_betas": "[0.9,0.98]"
    }  # fmt: skip
    one = sweep(str(config), *grid, "--vary", "one", "--out", str(tmp_path / "s"), "--dry-run")
    assert [line.split(" ", 1)[0] for line in one.stdout.splitlines()] == [
        "baseline.seed=42", "dropout=0.1.seed=42", "dropout=0.3.seed=42",
        "adam_betas=_0.9_0.98_.seed=42", "adam_betas=_0.9_0.999_.seed=42",
    ]  # fmt: skip
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("grid", "message"),
    [("model.dropout", "expected KEY=V1,V2"), ("model.dropuot=0.1", "unknown key 'model.dropuot'"),
     ("model.dropout=2", "model.dropout")],
)  # fmt: skip
def test_a_bad_grid_stops_before_any_run(grid: str, message: str, tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_corpus, "transformer")
    result = sweep(str(config), "--grid", grid, "--out", str(tmp_path / "s"))
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_sweep_trains_scores_on_dev_and_skips_what_it_has(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_corpus, "transformer", max_steps=10, eval_every=10)
    args = [str(config), "--grid", "model.dropout=0.3", "--vary", "one", "--minutes", "1", "--beam", "2"]
    args += ["--length-penalties", "0.5,2"]
    args += ["--out", str(tmp_path / "s"), "--threads", "1"]
    first = sweep(*args)
    assert first.returncode == 0, first.stderr
    records = [json.loads(line) for line in (tmp_path / "s" / "results.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["baseline.seed=42", "dropout=0.3.seed=42"]
    for record in records:
        assert record["updates"] == 10 and 0 <= record["dev_bleu"] <= 100 and record["dev_chrf"] > 0
        assert record["wall_s"] > 0 and all(p > 0 for p in record["probe_fp32_gflops"])
        assert set(record["dev_bleu_by_length_penalty"]) == {"0.5", "2"}
        run = tmp_path / "s" / record["name"]
        stored = (run / "config.yaml").read_text()
        assert ("dropout: 0.3" in stored) == (record["name"] != "baseline.seed=42")
        hyps = (run / "dev.dev.hyp").read_text(encoding="utf-8").splitlines()
        assert len(hyps) == len(tiny_corpus["dev.en"].read_text(encoding="utf-8").splitlines())
    table = (tmp_path / "s" / "summary.md").read_text()
    assert table == first.stdout and "| (the config) | 42 | 10 |" in table and "| model.dropout=0.3 | 42 |" in table
    again = sweep(*args)  # everything is in results.jsonl: nothing runs again
    assert again.returncode == 0 and "[1/" not in again.stderr and again.stdout == first.stdout
