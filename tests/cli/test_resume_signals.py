"""Exact resume after SIGINT and after SIGKILL, through the real `seqtool train` process."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import yaml

from seqtool.checkpoint import load_checkpoint


def two_corpora(corpus: dict[str, Path], root: Path) -> dict[str, object]:
    """data.train with the training pairs split in two corpora (first 400 and last 200 lines), weights 1 and 2."""
    train = []
    for name, lines, weight in (("head", slice(0, 400), 1), ("tail", slice(400, None), 2)):
        files = {}
        for side, lang in (("src", "en"), ("tgt", "de")):
            files[side] = root / f"{name}.{lang}"
            text = corpus[f"train.{lang}"].read_text(encoding="utf-8").splitlines(keepends=True)[lines]
            files[side].write_text("".join(text), encoding="utf-8")
        train.append({"name": name, "src": str(files["src"]), "tgt": str(files["tgt"]), "weight": weight})
    return {"train": train, "dev_src": str(corpus["dev.en"]), "dev_tgt": str(corpus["dev.de"])}


# Subword sampling (each epoch on the next of two sampled encodings; 60 steps are about six epochs) and word dropout
# are on: their random draws, too, must resume exactly.
REGULARISATION = {"data": {"subword_alpha": 0.3, "subword_nbest": 8, "subword_copies": 2},
                  "train": {"src_word_dropout": 0.1, "tgt_word_dropout": 0.1}}  # fmt: skip


def config(corpus: dict[str, Path], path: Path, corpora: int = 1) -> Path:
    data = (
        {k: str(corpus[f]) for k, f in [("train_src", "train.en"), ("train_tgt", "train.de"),
                                        ("dev_src", "dev.en"), ("dev_tgt", "dev.de")]}
        if corpora == 1 else two_corpora(corpus, path.parent)
    )  # fmt: skip
    path.write_text(
        yaml.safe_dump(
            {
                "data": data | REGULARISATION["data"],
                "tokenizer": {"vocab_size": 300},
                "model": {"kind": "transformer", "d_model": 64, "heads": 2, "ffn_dim": 128,
                          "encoder_layers": 1, "decoder_layers": 1},
                "train": {"max_steps": 60, "eval_every": 10, "log_every": 1, "batch_tokens": 1500, "threads": 1,
                          **REGULARISATION["train"]},
                "decode": {"max_len_a": 1.0, "max_len_b": 3},
            }
        )
    )  # fmt: skip
    return path


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "seqtool", "train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition: Callable[[], bool], timeout: float = 120.0, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the process ended (exit code {proc.returncode}) before the awaited moment\n{err}")
        time.sleep(0.02)


def logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:  # a line being written, or cut short by a kill
            continue
    return max(steps, default=0)


def final_params(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 60
    return state["model"]


def straight(tiny_corpus: dict[str, Path], root: Path, corpora: int) -> tuple[Path, Path]:
    """A config and its run, trained without interruption."""
    cfg = config(tiny_corpus, root / "c.yaml", corpora)
    proc = start(str(cfg), "--run-dir", str(root / "straight"))
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    return cfg, root / "straight"


@pytest.fixture(scope="module")
def straight_run(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return straight(tiny_corpus, tmp_path_factory.mktemp("signals"), 1)


@pytest.fixture(scope="module")
def straight_run_two_corpora(
    tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    return straight(tiny_corpus, tmp_path_factory.mktemp("signals2"), 2)


# about 30 s (make test-slow): the random-moment test below kills with SIGKILL 4 times in the default run, and
# tests/cli/test_training_options.py stops a run with SIGTERM
@pytest.mark.slow
@pytest.mark.parametrize(("how", "corpora"), [("sigint", 1), ("sigkill", 1), ("sigkill", 2)])
def test_stopped_and_resumed_run_matches_the_straight_run(
    how: str, corpora: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two corpora: each has its own sampler position, and the batches drawn per corpus are in the checkpoint."""
    cfg, straight = request.getfixturevalue("straight_run" if corpora == 1 else "straight_run_two_corpora")
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
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(steps)  # metrics logged after the last checkpoint were dropped on resume
    if corpora == 2:  # both corpora drawn from, and the run's token shares are the uninterrupted run's
        final = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()][-2]
        assert records[-2]["step"] == final["step"] == 60 and records[-2]["type"] == "train"
        assert records[-2]["run_share.tail"] == final["run_share.tail"] > records[-2]["run_share.head"] > 0


SAVE_EVERY = 10  # train.eval_every in `config`: last.pt is written after each validation


class Kill(NamedTuple):
    resumed_from: int | None  # the step of last.pt the killed launch started from (None: a fresh start)
    moment: str  # when it was killed
    logged: int  # the last step in metrics.jsonl at the kill
    saved: int | None  # the step of last.pt after the kill


def checkpoint_step(run: Path) -> int | None:
    """The step of last.pt, or None before the first save."""
    path = run / "checkpoints" / "last.pt"
    return int(load_checkpoint(path)["step"]) if path.exists() else None


def resumes_logged(run: Path) -> list[int]:
    """The steps of the "resumed from .../last.pt at step N" lines in train.log (a fresh start clears the log)."""
    path = run / "train.log"
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return [int(m) for m in re.findall(r"resumed from \S*last\.pt at step (\d+)", text)]


@pytest.mark.slow  # about 25 s: keeps make test under 8 minutes
def test_killed_at_random_moments_and_resumed_each_time(straight_run: tuple[Path, Path], tmp_path: Path) -> None:
    """SIGKILL at moments chosen from the run's progress: in set-up, just before a save, during validation and
    saving, just after; resuming each time from last.pt: the same final model as the uninterrupted run."""
    cfg, straight = straight_run
    run = tmp_path / "run"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    kills: list[Kill] = []  # what happened, for the assertion messages
    last_pt = run / "checkpoints" / "last.pt"
    resumes = 0  # launches after a kill that continued from last.pt (checked in train.log), of 4

    def launch() -> tuple[subprocess.Popen[str], int | None]:
        step = checkpoint_step(run)
        if step is None:  # killed before its first checkpoint: start over
            return start(str(cfg), "--run-dir", str(run), "--overwrite"), None
        return start("--resume", str(run)), step

    def why() -> str:
        return f"seed {seed}: {kills}"

    for attempt in range(4):
        before = resumes_logged(run)
        proc, resumed_from = launch()
        if resumed_from is not None:  # wait for the restore: it also drops the metrics logged after last.pt
            wait_for(lambda n=len(before): len(resumes_logged(run)) > n, proc=proc)
            assert resumes_logged(run)[-1] == resumed_from, why()
            if attempt:
                resumes += 1
        if attempt == 0 and rng.random() < 0.5:  # during set-up (tokenizer, corpus cache, model), before any save
            moment = "set-up"
            time.sleep(rng.uniform(0.0, 2.5))
        else:
            boundary = (resumed_from or 0) // SAVE_EVERY * SAVE_EVERY + SAVE_EVERY  # the next validation + save
            # a fresh run must get past its first save (else nothing is resumed); a resumed one may stop short of it
            offset = rng.choice([0, 1, 2] if resumed_from is None else [-3, -1, 0, 0, 1, 2])
            moment = f"{offset:+d} from the save at {boundary}"
            wait_for(lambda t=boundary + offset: logged_steps(run) >= t and last_pt.exists(), proc=proc)
            time.sleep(rng.uniform(0.0, 0.3))  # at the boundary: during validation, saving or the next steps
        proc.kill()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, f"{why()}\n{err}"  # killed, not finished or failed
        saved = checkpoint_step(run)  # loads last.pt: never a half-written file
        kills.append(Kill(resumed_from, moment, logged_steps(run), saved))
    proc, resumed_from = launch()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    if resumed_from is not None:
        assert resumes_logged(run)[-1:] == [resumed_from], why()
        resumes += 1
    assert resumes >= 3, f"only {resumes} of 4 launches after a kill resumed; {why()}"
    # at least one kill threw away logged steps after a save: the resumed run had to redo them exactly
    assert any(k.saved is not None and k.logged > k.saved for k in kills), why()
    a, b = final_params(straight), final_params(run)
    assert all(torch.equal(a[k], b[k]) for k in a), f"resumed parameters differ from the uninterrupted run; {why()}"
    assert not list((run / "checkpoints").glob(".*.tmp"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, 61)), why()  # each step once
    assert [r["step"] for r in records if r["type"] == "eval"] == list(range(10, 61, 10)), why()
