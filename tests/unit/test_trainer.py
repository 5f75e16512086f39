"""The trainer in-process on tiny data: gradient accumulation, exact resume, early stopping, checkpoint averaging."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from seqtool.checkpoint import load_checkpoint
from seqtool.config import Config, RNNConfig, TransformerConfig
from seqtool.data.batching import make_batch
from seqtool.models.flops import training_flops
from seqtool.rundir import RunDir
from seqtool.train.trainer import Trainer


def tiny_config(corpus: dict[str, Path], tokenizer: Path | None = None, **train: object) -> Config:
    cfg = Config()
    cfg.data.train_src, cfg.data.train_tgt = str(corpus["train.en"]), str(corpus["train.de"])
    cfg.data.dev_src, cfg.data.dev_tgt = str(corpus["dev.en"]), str(corpus["dev.de"])
    cfg.tokenizer.vocab_size = 300
    cfg.tokenizer.model = str(tokenizer) if tokenizer else ""
    cfg.model = TransformerConfig(d_model=32, heads=2, ffn_dim=64, encoder_layers=1, decoder_layers=1)
    cfg.train.batch_tokens = 600
    cfg.train.log_every = 2
    cfg.train.threads = 1
    cfg.decode.max_len_a, cfg.decode.max_len_b = 1.0, 3
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_two_accumulated_half_batches_equal_one_full_batch(
    tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=1, eval_every=100, clip_norm=0.0)
    cfg.model.dropout = cfg.model.attention_dropout = 0.0
    full = Trainer(cfg, tmp_path / "a")
    half = Trainer(cfg, tmp_path / "b")
    half.model.load_state_dict(full.model.state_dict())
    src, tgt = full.corpora[0].corpus.src_seqs[:16], full.corpora[0].corpus.tgt_seqs[:16]
    full._update([make_batch(src, tgt, full.specials)])
    first, second = make_batch(src[:8], tgt[:8], full.specials), make_batch(src[8:], tgt[8:], full.specials)
    first.update_tokens = second.update_tokens = first.tgt_tokens + second.tgt_tokens
    half._update([first, second])
    a, b = params(full.model), params(half.model)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert any((a[k] - params(Trainer(cfg, tmp_path / "c").model)[k]).abs().max() > 0 for k in a)  # it did update


@pytest.mark.parametrize("model", ["transformer", "gru"])
def test_resume_continues_exactly(model: str, tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path) -> None:
    """2N steps in one go == N steps, then --resume for N more: bit-identical parameters on CPU."""
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=12, eval_every=6, accum_steps=2)
    if model == "gru":
        cfg.model = RNNConfig(cell="gru", embed_dim=16, hidden_size=16, attention="luong")
    straight = Trainer(cfg, tmp_path / "straight")
    straight.fit()
    cfg.train.max_steps = 6
    Trainer(cfg, tmp_path / "split").fit()
    cfg.train.max_steps = 12
    resumed = Trainer(cfg, tmp_path / "split", resume=True)
    assert resumed.step == 6
    resumed.fit()
    a, b = params(straight.model), params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    last = load_checkpoint(RunDir(tmp_path / "split").checkpoint("last"))
    assert last["step"] == 12 and last["sampler"] == straight.sampler.state_dict()


def test_the_time_budget_counts_across_resumes_and_the_cooldown_follows_it(
    tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path
) -> None:
    """max_minutes is the run's budget, not each session's: a resumed run goes on with what is left (a run that has
    spent it stops at once), and the cool-down's learning rate continues from the time spent, down to 0 at the end."""
    cfg = tiny_config(
        tiny_corpus, spm_model, max_steps=1_000_000, eval_every=1_000_000, log_every=1,
        max_minutes=0.02, schedule="constant", warmup=0, cooldown=1.0,
    )  # fmt: skip
    run = RunDir(tmp_path / "run")

    def lrs() -> list[float]:
        lines = run.metrics.read_text(encoding="utf-8").splitlines()
        return [r["lr"] for r in map(json.loads, lines) if r["type"] == "train"]

    first = Trainer(cfg, run.root).fit()
    assert first.stop_reason == "max_minutes" and first.steps >= 3
    rates = lrs()
    assert len(rates) == first.steps and all(a >= b for a, b in itertools.pairwise(rates))
    assert rates[0] > 0.5e-3 and rates[-1] < 0.25e-3  # from near the peak (1e-3) down towards 0 by the clock
    clock = load_checkpoint(run.checkpoint("last"))["clock_s"]
    assert 0.02 * 60 <= clock < 0.02 * 60 + 60

    again = Trainer(cfg, run.root, resume=True).fit()  # the budget is spent: nothing more to train
    assert again.stop_reason == "max_minutes" and again.steps == first.steps
    assert "time budget (train.max_minutes = 0.02) is spent" in run.log.read_text(encoding="utf-8")

    cfg.train.max_minutes = 0.02 + clock / 60  # as much time again as the first session took
    more = Trainer(cfg, run.root, resume=True).fit()
    assert more.stop_reason == "max_minutes" and more.steps > first.steps
    resumed = lrs()[first.steps :]
    # the cool-down goes on from about half the new budget spent: never back to the peak a fresh clock would give
    assert resumed and resumed[0] < 0.6e-3 and resumed[-1] < 0.25e-3


def test_patience_stops_when_dev_bleu_stalls(tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=50, eval_every=1, patience=2, lr=0.0)
    result = Trainer(cfg, tmp_path / "run").fit()  # lr 0: dev BLEU never improves after the first validation
    assert result.stop_reason == "patience" and result.steps == 3


def test_keep_last_and_average_last(tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=6, eval_every=3, save_every=2, keep_last=2, average_last=2)
    Trainer(cfg, tmp_path / "run").fit()
    run = RunDir(tmp_path / "run")
    assert [p.name for p in run.step_checkpoints()] == ["step_4.pt", "step_6.pt"]
    s4, s6 = (load_checkpoint(p)["model"] for p in run.step_checkpoints())
    averaged = load_checkpoint(run.checkpoint("averaged"))
    assert averaged["averaged"] == ["step_4.pt", "step_6.pt"]
    key = next(k for k in s4 if s4[k].is_floating_point() and not torch.equal(s4[k], s6[k]))
    assert torch.allclose(averaged["model"][key], (s4[key] + s6[key]) / 2)


def test_tensorboard_scalars_or_a_clear_message(tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=4, eval_every=4, tensorboard=True)
    Trainer(cfg, tmp_path / "run").fit()
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "tensorboard package is missing" in log and "seqtool[tensorboard]" in log
        assert not (tmp_path / "run" / "tensorboard").exists()
    else:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
        events.Reload()
        records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        for kind, key in (("train", "loss"), ("train", "lr"), ("eval", "dev_loss"), ("eval", "dev_bleu")):
            logged = [(r["step"], r[key]) for r in records if r["type"] == kind]  # the same scalars as metrics.jsonl
            scalars = [(e.step, e.value) for e in events.Scalars(f"{kind}/{key}")]
            assert [s for s, _ in scalars] == [s for s, _ in logged] and logged, (kind, key)
            assert [v for _, v in scalars] == pytest.approx([v for _, v in logged], rel=1e-6), (kind, key)


@pytest.mark.slow  # about 19 s: keeps make test under 8 minutes
def test_logged_gflops_count_the_products_of_the_batches_drawn(
    tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path
) -> None:
    """Each log line's GFLOP/s × its seconds = the matmul FLOPs of its updates' pairs at their real lengths."""
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=6, eval_every=100, accum_steps=2)
    trainer = Trainer(cfg, tmp_path / "run", probe=True)
    result = trainer.fit()
    replay = iter(Trainer(cfg, tmp_path / "replay").sampler)  # the same seed draws the same batches
    corpus = trainer.corpora[0].corpus
    expected = []
    for _ in range(3):  # log_every=2: three log lines of two updates of two batches
        flops = 0.0
        for _ in range(2 * 2):
            _, idx = next(replay)
            src = [len(corpus.src_seqs[i]) + 1 for i in idx]  # + </s>
            tgt = [len(corpus.tgt_seqs[i]) + 1 for i in idx]  # + <s> in, </s> out
            flops += training_flops(cfg.model, src, tgt, trainer.tokenizer.tgt.vocab_size)
        expected.append(flops)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    train = [r for r in map(json.loads, lines) if r["type"] == "train"]
    seconds = [r["tgt_tokens"] / r["tgt_tok_s"] for r in train]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert [r["gflops"] * 1e9 * s for r, s in zip(train, seconds, strict=True)] == pytest.approx(expected, rel=1e-6)
    assert result.gflops == pytest.approx(sum(expected) / sum(seconds) / 1e9, rel=1e-6)
    assert result.probe_gflops is not None and result.probe_gflops > 0
    assert result.of_probe() == pytest.approx(result.gflops / result.probe_gflops)
