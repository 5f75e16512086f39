"""Trainer cadence, resume and optimizer behaviour that once went wrong silently (each test failed before its fix)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.progress import Progress

import seqtool.train.trainer as trainer_module
from seqtool.config import TrainConfig, TransformerConfig
from seqtool.errors import SeqtoolError
from seqtool.models import build_model
from seqtool.plot import read_metrics
from seqtool.progress import EtaColumn, eta_seconds, format_eta
from seqtool.run_info import format_info, run_info
from seqtool.runtime import rank_seed
from seqtool.tokenizer import SpecialIds
from seqtool.train.optim import SCHEDULES, build_optimizer
from seqtool.train.trainer import Trainer
from tests.unit.test_trainer import tiny_config


def records(run: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_a_skipped_update_runs_no_cadence_twice(
    tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug 1: the update after step 2 has a NaN loss and is skipped; steps 2's log, save and validation happen once."""
    real = trainer_module.batch_loss  # the training batches' loss (the dev loss is computed apart)
    calls = {"n": 0}

    def nan_on_third_update(*args: Any, **kwargs: Any) -> Any:
        loss, nll = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            return loss * float("nan"), nll * float("nan")
        return loss, nll

    monkeypatch.setattr(trainer_module, "batch_loss", nan_on_third_update)
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=4, log_every=1, eval_every=2, save_every=2, patience=2)
    cfg.train.skip_nonfinite = True
    result = Trainer(cfg, tmp_path / "run").fit()
    assert calls["n"] == 5 and result.steps == 4 and result.stop_reason == "max_steps"  # not stopped by patience
    assert [r["step"] for r in records(tmp_path / "run", "train")] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 for r in records(tmp_path / "run", "train"))
    assert [r["step"] for r in records(tmp_path / "run", "eval")] == [2, 4]
    assert "skipped an update with a non-finite loss after step 2" in (tmp_path / "run" / "train.log").read_text()


def test_resume_applies_a_changed_learning_rate(tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path) -> None:
    """Bug 2: --resume with a new train.lr used to keep the old one (restored with the optimizer's state)."""
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=4, eval_every=4, log_every=1, warmup=2, lr=1e-3)
    Trainer(cfg, tmp_path / "run").fit()
    cfg.train.lr, cfg.train.max_steps, cfg.train.weight_decay = 3e-3, 6, 0.01
    resumed = Trainer(cfg, tmp_path / "run", resume=True)
    factor = SCHEDULES["inverse_sqrt"](4, 2, 6)  # the factor of update 5 (0-based step 4)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx([3e-3 * factor] * 2)
    assert [g["weight_decay"] for g in resumed.optimizer.param_groups] == [0.01, 0.0]
    resumed.fit()
    lrs = {r["step"]: r["lr"] for r in records(tmp_path / "run", "train")}
    assert lrs[4] == pytest.approx(1e-3 * SCHEDULES["inverse_sqrt"](4, 2, 4))
    assert lrs[6] == pytest.approx(3e-3 * SCHEDULES["inverse_sqrt"](6, 2, 6))
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert "train.lr: 0.001 -> 0.003" in log
    assert "the optimizer follows the given config from step 5: lr 0.001 -> 0.003" in log


def test_weight_decay_spares_biases_norms_and_embeddings() -> None:
    """Bug 4: AdamW decayed every tensor; now only weight matrices (not embeddings, biases, LayerNorm gains)."""
    torch.manual_seed(0)
    model = build_model(
        TransformerConfig(d_model=16, heads=2, ffn_dim=32, encoder_layers=1, decoder_layers=1, tie_output=True),
        30,
        30,
        SpecialIds(pad=3, bos=1, eos=2, unk=0),
    )
    cfg = TrainConfig(lr=0.1, weight_decay=0.5)
    optimizer = build_optimizer(model, cfg)
    decay, plain = (set(map(id, g["params"])) for g in optimizer.param_groups)
    assert not decay & plain and len(decay | plain) == len(list(model.parameters()))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's step is 0: only the decay moves a weight
    optimizer.step()
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    for name, p in model.named_parameters():
        if p.ndim < 2 or id(p) in embeddings:
            assert torch.equal(p, before[name]), name
        else:
            torch.testing.assert_close(p, before[name] * (1 - 0.1 * 0.5), msg=name)
    assert any(p.ndim < 2 for p in model.parameters()) and embeddings


def test_update_token_count_reads_no_sequence_twice(
    tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path
) -> None:
    """Bug 5: the update's token count read every target sequence from disk a second time."""
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=1, eval_every=100, accum_steps=3)
    trainer = Trainer(cfg, tmp_path / "run")
    reads: list[int] = []
    corpus = trainer.corpora[0].corpus
    seqs = corpus.tgt_seqs

    class Counting:
        lengths = seqs.lengths  # from the offsets: the count reads no sequence

        def __getitem__(self, i: int) -> Any:
            reads.append(int(i))
            return seqs[i]

        def __len__(self) -> int:
            return len(seqs)

    corpus.tgt_seqs = Counting()  # type: ignore[assignment]
    group = trainer._next_batches(trainer.sampler.with_copy(), 3)
    rows = sum(b.tgt_out.size(0) for b in group)
    assert len(reads) == len(set(reads)) == rows
    lengths = corpus.tgt_lengths
    assert group[0].update_tokens == sum(int(lengths[i]) + 1 for i in reads)
    assert group[0].update_tokens == sum(b.tgt_tokens for b in group)


def test_eta_is_the_nearer_of_the_step_and_time_limits() -> None:
    """Bug 6: a 20-minute run of a 100,000-step config showed an ETA of 21 hours."""
    now = 1000.0
    assert eta_seconds(99_000, 0.75, deadline=now + 600, now=now) == 600
    assert eta_seconds(10, 0.75, deadline=now + 600, now=now) == 7.5
    assert eta_seconds(10, None, deadline=now + 60, now=now) == 60
    assert eta_seconds(10, None, deadline=None, now=now) is None
    assert eta_seconds(10, 1.0, deadline=now - 5, now=now) == 10 * 0 + 0.0  # past the deadline: ends now
    assert format_eta(3725.4) == "1:02:05" and format_eta(None) == "-:--:--"
    progress = Progress()
    task = progress.add_task("train", total=100_000, completed=0, deadline=time.monotonic() + 1200)
    assert str(EtaColumn().render(progress.tasks[task])) in ("ETA 0:20:00", "ETA 0:19:59")


def test_the_trainer_gives_the_reporter_its_deadline(
    tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    class Recorder(trainer_module.NullReporter):
        def start(self, total_steps: int, start_step: int, deadline: float | None = None) -> None:
            seen.update(total=total_steps, deadline=deadline, at=time.monotonic())

    cfg = tiny_config(tiny_corpus, spm_model, max_steps=2, eval_every=100, max_minutes=20.0)
    Trainer(cfg, tmp_path / "run", reporter=Recorder()).fit()
    assert seen["total"] == 2 and seen["deadline"] == pytest.approx(seen["at"] + 1200, abs=5)


def test_a_run_shorter_than_its_log_and_eval_steps_logs_and_validates_its_last_step(
    tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path
) -> None:
    """Bug 7: `--set train.max_steps=3` with log_every/eval_every 100 wrote no metrics.jsonl and no best.pt."""
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=3, log_every=100, eval_every=100)
    Trainer(cfg, tmp_path / "run").fit()
    run = tmp_path / "run"
    assert [r["step"] for r in records(run, "train")] == [3]
    assert [r["step"] for r in records(run, "eval")] == [3]
    assert (run / "checkpoints" / "best.pt").exists() and (run / "checkpoints" / "last.pt").exists()
    assert len(read_metrics(run)) == 2
    assert "no metrics yet" not in format_info(run_info(run))


def test_info_and_plot_say_no_metrics_yet(tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=1, eval_every=100)
    Trainer(cfg, tmp_path / "run")  # set up, never trained: config and tokenizer, no metrics
    assert "no metrics yet (metrics.jsonl is written" in format_info(run_info(tmp_path / "run"))
    assert run_info(tmp_path / "run").has_metrics is False
    with pytest.raises(SeqtoolError, match="has no metrics yet"):
        read_metrics(tmp_path / "run")
    (tmp_path / "other").mkdir()
    with pytest.raises(SeqtoolError, match=r"has no metrics\.jsonl") as exc:
        read_metrics(tmp_path / "other")
    assert "is it a run directory" in str(exc.value.hint)


def test_each_rank_has_its_own_seed() -> None:
    """Bug 3 (part): every rank drew the same dropout masks; rank 0 keeps the single-process seed."""
    assert rank_seed(42, 0) == 42
    assert len({rank_seed(42, r) for r in range(8)}) == 8
    assert rank_seed(42, 1) == rank_seed(42, 1) != rank_seed(43, 1)
