"""The training loop: run-directory set-up, tokenizer, data, updates, validation, checkpoints, exact resume.

The library never prints: progress and messages go to a `Reporter` (the CLI passes a rich progress bar) and to
the run's train.log; figures go to metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import torch

from seqtool import __version__
from seqtool.config import Config, config_diff, config_to_dict, dump_config
from seqtool.data.batching import Batch, BatchSampler, make_batch
from seqtool.data.corpus import filter_pairs, read_parallel
from seqtool.decode.search import SearchConfig
from seqtool.decode.translate import translate_ids
from seqtool.errors import CheckpointError, ConfigError, DataError, TrainingError
from seqtool.evaluate import corpus_bleu
from seqtool.models import build_model
from seqtool.models.base import Seq2SeqModel
from seqtool.rundir import RunDir, load_model_weights, read_run_config
from seqtool.runtime import (
    autocast,
    bf16_supported,
    limit_onednn_cache,
    resolve_device,
    seed_everything,
    set_threads,
)
from seqtool.tokenizer import Tokenizer, TokenizerSpec, train_sentencepiece
from seqtool.train.checkpoint import atomic_write_text, average_checkpoint_files, load_checkpoint, save_checkpoint
from seqtool.train.loss import label_smoothed_nll
from seqtool.train.optim import build_optimizer, build_scheduler

MAX_SKIPPED_IN_A_ROW = 20  # with train.skip_nonfinite: this many bad updates in a row end the run


class Reporter(Protocol):
    """Where the trainer sends progress (the CLI shows it; tests can ignore it)."""

    def start(self, total_steps: int, start_step: int) -> None: ...
    def advance(self, step: int) -> None: ...
    def update(self, values: dict[str, float]) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class NullReporter:
    """A reporter that shows nothing."""

    def start(self, total_steps: int, start_step: int) -> None:
        pass

    def advance(self, step: int) -> None:
        pass

    def update(self, values: dict[str, float]) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class TrainResult:
    """How a training run ended."""

    run_dir: Path
    steps: int
    stop_reason: str  # max_steps | max_minutes | patience | interrupted
    best_bleu: float | None
    last_eval: dict[str, float] | None


@dataclass
class EncodedData:
    """Training (filtered) and dev pairs as piece ids."""

    train_src: list[list[int]]
    train_tgt: list[list[int]]
    dev_src: list[list[int]]
    dev_tgt: list[list[int]]
    dev_refs: list[str]


# ---------------------------------------------------------------------------------------------------------------------
# Set-up


def _prepare_run_dir(run: RunDir, resume: bool, overwrite: bool) -> None:
    if resume:
        if not run.checkpoint("last").exists():
            raise CheckpointError(
                f"nothing to resume in {run.root}: no checkpoints/last.pt",
                "start the run without --resume",
            )
        for partial in run.checkpoints.glob(".*.tmp"):  # a save cut short by a kill; the renamed files are complete
            partial.unlink()
        return
    if run.holds_run() and not overwrite:
        raise CheckpointError(
            f"run directory {run.root} already holds a run",
            "continue it with --resume, start over with --overwrite, or choose another --run-dir",
        )
    # a previous run (with --overwrite) or the leftovers of a start that failed during set-up
    for path in (run.checkpoints, run.config, run.metrics, run.log):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for spm_file in [*run.root.glob("spm*.model"), *run.root.glob("spm*.vocab")]:
        spm_file.unlink()
    run.checkpoints.mkdir(parents=True, exist_ok=True)


def _ensure_tokenizer(cfg: Config, run: RunDir, log: Any) -> Tokenizer:
    """Copy the configured tokenizer(s) into the run directory, training them first where they do not exist."""
    spec = TokenizerSpec(
        vocab_size=cfg.tokenizer.vocab_size,
        model_type=cfg.tokenizer.type,
        character_coverage=cfg.tokenizer.character_coverage,
        input_sentence_size=cfg.tokenizer.input_sentence_size,
        seed=cfg.seed,
    )
    src_dest, tgt_dest = run.tokenizer_paths(cfg.tokenizer.joint)
    if cfg.tokenizer.joint:
        sides = [(cfg.tokenizer.model, [cfg.data.train_src, cfg.data.train_tgt], src_dest)]
    else:
        sides = [
            (cfg.tokenizer.src_model, [cfg.data.train_src], src_dest),
            (cfg.tokenizer.tgt_model, [cfg.data.train_tgt], tgt_dest),
        ]
    for configured, inputs, dest in sides:
        if dest.exists():
            continue
        if configured and Path(configured).exists():
            shutil.copyfile(configured, dest)
            continue
        target = Path(configured) if configured else dest
        log(f"training a {spec.model_type} SentencePiece model ({spec.vocab_size} pieces) on {', '.join(inputs)}")
        model_path = train_sentencepiece(inputs, target.with_suffix(""), spec)
        if model_path != dest:
            shutil.copyfile(model_path, dest)
    return Tokenizer.load(src_dest, tgt_dest)


@dataclass
class RawData:
    """The corpus text, read (and checked) before anything is trained on it."""

    train_src: list[str]
    train_tgt: list[str]
    dev_src: list[str]
    dev_tgt: list[str]


def _read_data(cfg: Config) -> RawData:
    """Read and check the training and dev files (line counts, encoding) before the tokenizer is trained."""
    for key in ("train_src", "train_tgt", "dev_src", "dev_tgt"):
        name = getattr(cfg.data, key)
        if name and not Path(name).exists():
            raise DataError(
                f"data.{key}: file not found: {name}", "paths in a config are relative to the current directory"
            )
    errors = cfg.data.encoding_errors
    train_src, train_tgt = read_parallel(cfg.data.train_src, cfg.data.train_tgt, errors)
    dev_src: list[str] = []
    dev_tgt: list[str] = []
    if cfg.data.dev_src:
        dev_src, dev_tgt = read_parallel(cfg.data.dev_src, cfg.data.dev_tgt, errors)
        if cfg.train.eval_max_sentences:
            dev_src, dev_tgt = dev_src[: cfg.train.eval_max_sentences], dev_tgt[: cfg.train.eval_max_sentences]
    return RawData(train_src, train_tgt, dev_src, dev_tgt)


def unk_rate(ids: list[list[int]], unk: int) -> float:
    """Share of pieces that are <unk>."""
    total = sum(len(seq) for seq in ids)
    return sum(seq.count(unk) for seq in ids) / total if total else 0.0


def _encode_data(cfg: Config, raw: RawData, tokenizer: Tokenizer, log: Any) -> EncodedData:
    src_ids = tokenizer.src.encode(raw.train_src)
    tgt_ids = tokenizer.tgt.encode(raw.train_tgt)
    keep, report = filter_pairs(src_ids, tgt_ids, cfg.data.max_len, cfg.data.max_ratio)
    log(f"training data: {report.summary()}")
    if not keep:
        raise DataError(
            f"no training pairs left after filtering {cfg.data.train_src} / {cfg.data.train_tgt}",
            "check the files, or raise data.max_len",
        )
    data = EncodedData([src_ids[i] for i in keep], [tgt_ids[i] for i in keep], [], [], raw.dev_tgt)
    if raw.dev_src:
        data.dev_src = tokenizer.src.encode(raw.dev_src)
        data.dev_tgt = tokenizer.tgt.encode(raw.dev_tgt)
        rates = {
            side: unk_rate(ids, tokenizer.specials.unk)
            for side, ids in (("source", data.dev_src), ("target", data.dev_tgt))
        }
        log(
            f"dev data: {len(raw.dev_src)} pairs; <unk> rate {rates['source']:.2%} source, {rates['target']:.2%} target"
        )
        for side, rate in rates.items():
            if rate > cfg.data.unk_warn:
                log(
                    f"warning: {rate:.1%} of the dev {side} pieces are <unk>: the tokenizer does not fit this data "
                    "(another language or script?); check tokenizer.model or raise tokenizer.character_coverage"
                )
    return data


@contextmanager
def _stop_on_signals(flag: dict[str, bool]) -> Iterator[None]:
    """SIGINT/SIGTERM set flag['stop'] so the loop can save and leave; a second SIGINT interrupts at once."""

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not in the main thread: no handlers
        yield
        return
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# ---------------------------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """One training run in one run directory."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        init_from: Path | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        if not cfg.data.train_src or not cfg.data.train_tgt:
            raise ConfigError("data.train_src and data.train_tgt are required to train")
        self.run = RunDir(Path(run_dir))
        self.reporter = reporter or NullReporter()
        self.resume = resume
        if resume and self.run.config.exists():
            stored = read_run_config(self.run)
            changes = config_diff(stored, cfg)
            if changes:
                self.log("the given config differs from the stored run: " + "; ".join(changes))
        raw = _read_data(cfg)  # bad data fails here, before anything is written
        _prepare_run_dir(self.run, resume, overwrite)
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        set_threads(cfg.train.threads)
        limit_onednn_cache()
        self.precision = cfg.train.precision
        if self.precision == "bf16" and not bf16_supported(self.device):
            self.log(f"bf16 is not supported on this {self.device.type} device: training in fp32")
            self.precision = "fp32"
        self.tokenizer = _ensure_tokenizer(cfg, self.run, self.log)
        self.data = _encode_data(cfg, raw, self.tokenizer, self.log)
        atomic_write_text(self.run.config, dump_config(cfg))  # written last: its presence marks a started run
        seed_everything(cfg.seed)
        self.specials = self.tokenizer.specials
        self.model: Seq2SeqModel = build_model(
            cfg.model, self.tokenizer.src.vocab_size, self.tokenizer.tgt.vocab_size, self.specials
        ).to(self.device)
        self.optimizer = build_optimizer(self.model.parameters(), cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        self.sampler = BatchSampler(
            [len(s) for s in self.data.train_src],
            [len(t) for t in self.data.train_tgt],
            cfg.train.batch_tokens,
            cfg.seed,
        )
        self.step = 0
        self.best_bleu: float | None = None
        self.stale_evals = 0
        self.skipped_updates = 0
        self.skipped_in_a_row = 0
        self.loss_sum = torch.zeros((), device=self.device)
        self.nll_sum = torch.zeros((), device=self.device)
        self.last_eval: dict[str, float] | None = None
        if resume:
            self._restore(self.run.checkpoint("last"))
        elif init_from is not None:
            state = load_checkpoint(init_from)
            load_model_weights(self.model, state["model"], Path(init_from))
            self.log(f"initialised the weights from {init_from}")
        self.log(
            f"model: {cfg.model.kind}, {self.model.num_parameters():,} parameters; device {self.device}, "
            f"{self.precision}; {self.sampler.batches_per_epoch} batches per epoch, "
            f"padding {self.sampler.padding_fraction():.1%}"
        )

    # -- logging ------------------------------------------------------------------------------------------------------
    def log(self, text: str) -> None:
        """A message for the user and the run's train.log."""
        self.reporter.message(text)
        self.run.root.mkdir(parents=True, exist_ok=True)
        with open(self.run.log, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def _metrics(self, record: dict[str, Any]) -> None:
        with open(self.run.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def _checkpoint_state(self, full: bool) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "step": self.step,
            "config": config_to_dict(self.cfg),
            "seqtool_version": __version__,
        }
        if self.last_eval:
            state["dev_bleu"] = self.last_eval.get("dev_bleu")
            state["dev_loss"] = self.last_eval.get("dev_loss")
        if full:
            state.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                sampler=self.sampler.state_dict(),
                best_bleu=self.best_bleu,
                stale_evals=self.stale_evals,
                rng=_rng_state(),
            )
        return state

    def _save_last(self) -> None:
        self._check_finite()
        save_checkpoint(self.run.checkpoint("last"), self._checkpoint_state(full=True))

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path)
        load_model_weights(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.best_bleu = state.get("best_bleu")
        self.stale_evals = int(state.get("stale_evals", 0))
        _set_rng_state(state["rng"])
        self._truncate_metrics()
        self.log(f"resumed from {path} at step {self.step}")

    def _truncate_metrics(self) -> None:
        """Drop metrics logged after the checkpoint (a run killed after its last save logged steps that will rerun)."""
        if not self.run.metrics.exists():
            return
        lines = self.run.metrics.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                if json.loads(line).get("step", 0) <= self.step:
                    kept.append(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
        if len(kept) != len(lines):
            atomic_write_text(self.run.metrics, "".join(kept))

    def _save_step(self) -> None:
        self._check_finite()
        save_checkpoint(self.run.checkpoint(f"step_{self.step}"), self._checkpoint_state(full=False))
        keep = self.cfg.train.keep_last
        if keep:
            for old in self.run.step_checkpoints()[:-keep]:
                old.unlink(missing_ok=True)

    def _average_last(self, n: int) -> None:
        """Average the newest n step checkpoints into averaged.pt; it becomes best.pt if its dev BLEU is higher."""
        paths = self.run.step_checkpoints()[-n:]
        if len(paths) < 2:
            self.log(f"average_last: only {len(paths)} step checkpoint(s), nothing to average")
            return
        state = average_checkpoint_files(paths)
        trained = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(state["model"])
        message = f"averaged {len(paths)} checkpoints ({paths[0].stem} .. {paths[-1].stem})"
        if self.data.dev_src:
            result = self.evaluate()
            state.update(dev_bleu=result["dev_bleu"], dev_loss=result["dev_loss"])
            self._metrics({"type": "eval", "step": self.step, "averaged": len(paths), **result})
            message += f": dev BLEU {result['dev_bleu']:.2f}"
            if self.best_bleu is None or result["dev_bleu"] > self.best_bleu:
                self.best_bleu = result["dev_bleu"]
                save_checkpoint(self.run.checkpoint("best"), state)
                message += " (best: saved as best.pt)"
        save_checkpoint(self.run.checkpoint("averaged"), state)
        self.model.load_state_dict(trained)
        self.log(message)

    def _out_of_patience(self) -> bool:
        patience = self.cfg.train.patience
        if patience and self.stale_evals >= patience:
            self.log(f"dev BLEU has not improved for {patience} validations: stopping early")
            return True
        return False

    # -- validation ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Dev loss/perplexity (teacher forcing, no smoothing) and dev BLEU (greedy, detokenised)."""
        self.model.eval()
        nll_total, tokens = 0.0, 0
        src, tgt = self.data.dev_src, self.data.dev_tgt
        order = sorted(range(len(src)), key=lambda i: (len(tgt[i]), len(src[i])))
        rows = max(1, self.cfg.train.batch_tokens // 64)
        for start in range(0, len(order), rows):
            idx = order[start : start + rows]
            batch = make_batch([src[i] for i in idx], [tgt[i] for i in idx], self.specials).to(self.device)
            keep = batch.tgt_out != self.specials.pad
            with autocast(self.device, self.precision):
                logits = self.model(batch.src, batch.tgt_in, keep)
            _, nll = label_smoothed_nll(logits, batch.tgt_out[keep], self.specials.pad, 0.0)
            nll_total += float(nll)
            tokens += batch.tgt_tokens
        search_cfg = SearchConfig(
            beam=1,
            nbest=1,
            length_penalty=0.0,
            max_len_a=self.cfg.decode.max_len_a,
            max_len_b=self.cfg.decode.max_len_b,
        )
        hyps = translate_ids(self.model, src, search_cfg, self.cfg.decode.batch_tokens, self.device, self.precision)
        texts = self.tokenizer.tgt.decode([h[0].tokens if h else [] for h in hyps])
        self.model.train()
        dev_loss = nll_total / max(tokens, 1)
        return {
            "dev_loss": dev_loss,
            "dev_ppl": math.exp(min(dev_loss, 50.0)),
            "dev_bleu": corpus_bleu(texts, self.data.dev_refs),
        }

    def _validate_and_save(self) -> None:
        self._check_finite()
        if self.data.dev_src:
            self.last_eval = self.evaluate()
            bleu = self.last_eval["dev_bleu"]
            improved = self.best_bleu is None or bleu > self.best_bleu
            self.stale_evals = 0 if improved else self.stale_evals + 1
            if improved:
                self.best_bleu = bleu
                save_checkpoint(self.run.checkpoint("best"), self._checkpoint_state(full=False))
            self._metrics({"type": "eval", "step": self.step, **self.last_eval, "best_bleu": self.best_bleu})
            self.log(
                f"step {self.step}: dev loss {self.last_eval['dev_loss']:.3f} (ppl {self.last_eval['dev_ppl']:.1f}), "
                f"dev BLEU {bleu:.2f}" + (" (best)" if improved else f" (best {self.best_bleu:.2f})")
            )
        self._save_last()

    # -- the loop -----------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until max_steps, max_minutes or a stop signal; returns how it ended."""
        tcfg = self.cfg.train
        self.model.train()
        batches = iter(self.sampler)
        flag = {"stop": False}
        started = time.monotonic()
        deadline = started + tcfg.max_minutes * 60 if tcfg.max_minutes else math.inf
        window_start, window_tokens = time.monotonic(), 0
        last_saved = self.step
        stop_reason = "max_steps"
        self.reporter.start(tcfg.max_steps, self.step)
        try:
            with _stop_on_signals(flag):
                while self.step < tcfg.max_steps:
                    if flag["stop"]:
                        stop_reason = "interrupted"
                        break
                    if time.monotonic() >= deadline:
                        stop_reason = "max_minutes"
                        break
                    window_tokens += self._update(self._next_batches(batches, tcfg.accum_steps))
                    self.reporter.advance(self.step)
                    if self.step % tcfg.log_every == 0:
                        self._log_train(window_tokens, time.monotonic() - window_start, started)
                        window_start, window_tokens = time.monotonic(), 0
                    if tcfg.save_every and self.step % tcfg.save_every == 0:
                        self._save_step()
                    if self.step % tcfg.eval_every == 0:
                        self._validate_and_save()
                        last_saved = self.step
                        window_start = time.monotonic()  # validation time is not training throughput
                        if self._out_of_patience():
                            stop_reason = "patience"
                            break
                if stop_reason == "interrupted":
                    if last_saved != self.step:
                        self._save_last()
                    self.log(
                        f"interrupted at step {self.step}; saved {self.run.checkpoint('last')}. "
                        f"Resume with: seqtool train --resume {self.run.root}"
                    )
                else:
                    if last_saved != self.step:
                        self._validate_and_save()
                    if tcfg.average_last:
                        self._average_last(tcfg.average_last)
        finally:
            self.reporter.close()
        if stop_reason != "interrupted":
            self.log(f"finished at step {self.step} ({stop_reason})")
        return TrainResult(self.run.root, self.step, stop_reason, self.best_bleu, self.last_eval)

    def _update(self, group: list[Batch]) -> int:
        """One optimizer update from the batches of `group` (gradient accumulation); returns its target tokens.

        With train.skip_nonfinite, an update whose loss is NaN/inf is dropped (its data is consumed) and 0 returned.
        """
        tcfg = self.cfg.train
        update_loss = torch.zeros((), device=self.device)
        update_nll = torch.zeros((), device=self.device)
        for batch in group:
            keep = batch.tgt_out != self.specials.pad  # logits and loss only at real target positions
            with autocast(self.device, self.precision):
                logits = self.model(batch.src, batch.tgt_in, keep)
            loss, nll = label_smoothed_nll(logits, batch.tgt_out[keep], self.specials.pad, tcfg.label_smoothing)
            # normalised by the tokens of the whole update, so N accumulated batches = one big batch
            (loss / batch.update_tokens).backward()
            update_loss += loss.detach()  # kept on the device: no host sync until the next log line
            update_nll += nll.detach()
        if tcfg.skip_nonfinite and not bool(torch.isfinite(update_loss)):  # a host sync, only with this option
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            self.skipped_in_a_row += 1
            self.log(f"skipped an update with a non-finite loss after step {self.step} ({self.skipped_updates} so far)")
            if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                raise TrainingError(
                    f"{MAX_SKIPPED_IN_A_ROW} updates in a row had a non-finite loss at step {self.step}: giving up",
                    "lower train.lr or raise train.warmup; check the data",
                )
            return 0
        self.skipped_in_a_row = 0
        if tcfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tcfg.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.loss_sum += update_loss
        self.nll_sum += update_nll
        return sum(batch.tgt_tokens for batch in group)

    def _check_finite(self) -> None:
        """Refuse to save a model whose parameters are NaN/inf (it would replace a good checkpoint)."""
        if all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            return
        last = self.run.checkpoint("last")
        raise TrainingError(
            f"the model's parameters became NaN/inf at step {self.step}; nothing was saved",
            (f"the last good checkpoint is {last}; " if last.exists() else "")
            + "lower train.lr, raise train.warmup, or set train.skip_nonfinite: true",
        )

    def _next_batches(self, batches: Iterator[list[int]], count: int) -> list[Batch]:
        """The `count` batches of one update, on the device, each knowing the update's total target tokens."""
        src, tgt = self.data.train_src, self.data.train_tgt
        group = [
            make_batch([src[i] for i in idx], [tgt[i] for i in idx], self.specials) for idx in islice(batches, count)
        ]
        total = sum(b.tgt_tokens for b in group)
        for b in group:
            b.update_tokens = total
        return [b.to(self.device) for b in group]

    def _log_train(self, tokens: int, seconds: float, started: float) -> None:
        loss = float(self.loss_sum) / max(tokens, 1)  # one host sync per log interval
        nll = float(self.nll_sum) / max(tokens, 1)
        self.loss_sum.zero_()
        self.nll_sum.zero_()
        if not math.isfinite(loss):
            last = self.run.checkpoint("last")
            raise TrainingError(
                f"the training loss became {loss} by step {self.step}; stopped without saving",
                (
                    f"the last good checkpoint is {last}; resume from it with --resume after lowering train.lr, or "
                    if last.exists()
                    else "lower train.lr or raise train.warmup, or "
                )
                + "set train.skip_nonfinite: true",
            )
        record = {
            "type": "train",
            "step": self.step,
            "loss": loss,
            "nll": nll,
            "ppl": math.exp(min(nll, 50.0)),
            "lr": self.scheduler.get_last_lr()[0],
            "tgt_tokens": tokens,
            "tgt_tok_s": tokens / max(seconds, 1e-9),
            "elapsed_s": time.monotonic() - started,
        }
        self._metrics(record)
        self.reporter.update({"loss": loss, "tok_s": record["tgt_tok_s"], "lr": record["lr"]})


def train(cfg: Config, run_dir: Path, **kwargs: Any) -> TrainResult:
    """Set up a run directory (or resume one) and train; see `Trainer`."""
    return Trainer(cfg, run_dir, **kwargs).fit()
