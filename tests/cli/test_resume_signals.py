"""Exact resume after SIGINT and after SIGKILL, through the real `seqtool train` process."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from seqtool.checkpoint import load_checkpoint


def config(corpus: dict[str, Path], path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "data": {k: str(corpus[f]) for k, f in [("train_src", "train.en"), ("train_tgt", "train.de"),
                                                        ("dev_src", "dev.en"), ("dev_tgt", "dev.de")]},
                "tokenizer": {"vocab_size": 300},
                "model": {"kind": "transformer", "d_model": 64, "heads": 2, "ffn_dim": 128,
                          "encoder_layers": 1, "decoder_layers": 1},
                "train": {"max_steps": 60, "eval_every": 10, "log_every": 1, "batch_tokens": 1500, "threads": 1},
                "decode": {"max_len_a": 1.0, "max_len_b": 3},
            }
        )
    )  # fmt: skip
    return path


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "seqtool", "train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def final_params(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 60
    return state["model"]


@pytest.fixture(scope="module")
def straight_run(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("signals")
    cfg = config(tiny_corpus, root / "c.yaml")
    proc = start(str(cfg), "--run-dir", str(root / "straight"))
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    return cfg, root / "straight"


@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_stopped_and_resumed_run_matches_the_straight_run(
    how: str, straight_run: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg, straight = straight_run
    run = tmp_path / "run"
    proc = start(str(cfg), "--run-dir", str(run))
    if how == "sigint":
        wait_for(lambda: logged_steps(run) >= 15)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "Resume with: seqtool train --resume" in err and "Traceback" not in err
        stopped_at = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
        assert 15 <= stopped_at < 60
    else:
        wait_for(lambda: (run / "checkpoints" / "last.pt").exists() and logged_steps(run) >= 25)
        proc.kill()
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    resumed = start("--resume", str(run))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    a, b = final_params(straight), final_params(run)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed parameters differ from the uninterrupted run"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # metrics logged after the last checkpoint were dropped on resume


def test_killed_at_random_moments_and_resumed_each_time(straight_run: tuple[Path, Path], tmp_path: Path) -> None:
    """SIGKILL at random moments (set-up, training, validation, saving), resuming each time: same final model."""
    cfg, straight = straight_run
    run = tmp_path / "run"
    rng = random.Random(20261125)

    def launch() -> subprocess.Popen[str]:
        if (run / "checkpoints" / "last.pt").exists():
            return start("--resume", str(run))
        return start(str(cfg), "--run-dir", str(run), "--overwrite")  # killed before its first checkpoint

    for _ in range(4):
        proc = launch()
        time.sleep(rng.uniform(0.5, 4.5))
        proc.kill()
        proc.communicate(timeout=60)
        if (run / "checkpoints" / "last.pt").exists():
            load_checkpoint(run / "checkpoints" / "last.pt")  # never a half-written file
    proc = launch()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    a, b = final_params(straight), final_params(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((run / "checkpoints").glob(".*.tmp"))
