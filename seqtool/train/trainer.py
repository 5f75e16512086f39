"""The training loop: updates, validation, checkpoints, exact resume, early stopping.

Set-up (run directory, tokenizer, data checks, corpus cache) lives in setup.py, the resume state in state.py.
The library never prints: progress and messages go to a `Reporter` (the CLI passes a rich progress bar) and to
the run's train.log; figures go to metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from seqtool import __version__
from seqtool.atomic import atomic_write_text
from seqtool.checkpoint import average_checkpoint_files, load_checkpoint, save_checkpoint
from seqtool.config import Config, config_diff, config_to_dict, dump_config
from seqtool.data.batching import Batch, make_batch
from seqtool.decode.search import SearchConfig
from seqtool.decode.translate import translate_ids
from seqtool.errors import CheckpointError, ConfigError, TrainingError
from seqtool.evaluate import corpus_bleu
from seqtool.models import build_model
from seqtool.models.base import Seq2SeqModel
from seqtool.models.flops import training_flops
from seqtool.probe import matmul_gflops
from seqtool.rundir import RunDir, load_model_weights, read_run_config
from seqtool.runtime import (
    autocast,
    bf16_supported,
    keep_freed_memory,
    limit_onednn_cache,
    resolve_device,
    seed_everything,
    set_threads,
)
from seqtool.tokenizer import Tokenizer
from seqtool.train.distributed import (
    all_reduce,
    barrier,
    broadcast_flag,
    context_from_env,
    init_distributed,
    is_peer_failure,
    peer_failure,
    shutdown,
)
from seqtool.train.loss import batch_loss, label_smoothed_nll
from seqtool.train.optim import build_optimizer, build_scheduler
from seqtool.train.setup import (
    DevSet,
    batch_shares,
    corpora_summary,
    corpus_mix,
    encode_dev,
    encoded_corpora,
    ensure_tokenizer,
    prepare_run_dir,
    read_data,
)
from seqtool.train.state import all_rng_states, apply_hyperparameters, restore_rank_rng, truncate_metrics
from seqtool.train.word_dropout import drop_words

MAX_SKIPPED_IN_A_ROW = 20  # with train.skip_nonfinite: this many bad updates in a row end the run


class Reporter(Protocol):
    """Where the trainer sends progress (the CLI shows it; tests can ignore it)."""

    def start(self, total_steps: int, start_step: int, deadline: float | None = None) -> None: ...
    def advance(self, step: int) -> None: ...
    def update(self, values: dict[str, float]) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class NullReporter:
    """A reporter that shows nothing."""

    def start(self, total_steps: int, start_step: int, deadline: float | None = None) -> None:
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
    gflops: float | None = None  # matmul GFLOP/s of this session's training (validation excluded), all processes
    probe_gflops: float | None = None  # the best matmul probe beside it, per process (with probe=True)
    processes: int = 1  # that trained (torchrun's world size)

    def of_probe(self) -> float | None:
        """The achieved GFLOP/s as a fraction of the probe's ceiling times the processes that trained."""
        if not self.gflops or not self.probe_gflops:
            return None
        return self.gflops / (self.probe_gflops * self.processes)


def _tensorboard_writer(run: RunDir, log: Any) -> Any:
    """A SummaryWriter on RUN_DIR/tensorboard, or None (with a message) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("train.tensorboard is on but the tensorboard package is missing (pip install 'seqtool[tensorboard]')")
        return None
    return SummaryWriter(log_dir=str(run.root / "tensorboard"))


@contextmanager
def _stop_on_signals(flag: dict[str, bool], keep_after_failure: bool = False) -> Iterator[None]:
    """SIGINT/SIGTERM set flag['stop'] so the loop can save and leave; a second SIGINT interrupts at once.

    With `keep_after_failure` (a torchrun job), the handlers stay after an error: when a peer dies, torchrun sends
    SIGTERM to the survivors, and the default handler would kill this process before it reports why it stopped.
    """

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not in the main thread: no handlers
        yield
        return
    failed = True
    try:
        yield
        failed = False
    finally:
        if not (failed and keep_after_failure):
            for sig, old in previous.items():
                signal.signal(sig, old)


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
        probe: bool = False,
    ) -> None:
        if not cfg.data.corpora() or not all(c.src and c.tgt for c in cfg.data.corpora()):
            raise ConfigError(
                "training data is required: data.train_src and data.train_tgt (or data.train, a list of corpora)"
            )
        self.run = RunDir(Path(run_dir))
        self.dist = context_from_env()  # rank 0 alone writes the run directory, logs and shows progress
        self.reporter = (reporter or NullReporter()) if self.dist.is_main else NullReporter()
        self.resume = resume
        if resume and self.run.config.exists():
            changes = config_diff(read_run_config(self.run), cfg)
            if changes:
                self.log("the given config differs from the stored run: " + "; ".join(changes))
        raw = read_data(cfg)  # bad data fails here, before anything is written
        if self.dist.is_main:
            prepare_run_dir(self.run, resume, overwrite)
        self.cfg = cfg
        self.dist, self.device = init_distributed(resolve_device(cfg.train.device))
        set_threads(cfg.train.threads)
        limit_onednn_cache()
        keep_freed_memory()
        self.precision = cfg.train.precision
        if self.precision == "bf16" and not bf16_supported(self.device):
            self.log(f"bf16 is not supported on this {self.device.type} device: training in fp32")
            self.precision = "fp32"
        if self.dist.is_main:
            self.tokenizer = ensure_tokenizer(cfg, self.run, self.log)
            self.corpora = encoded_corpora(cfg, self.run, self.tokenizer, self.log)
        barrier(self.dist)  # the other ranks open the tokenizer and the corpus caches rank 0 prepared
        if not self.dist.is_main:
            self.tokenizer = Tokenizer.load(*self.run.tokenizer_paths(cfg.tokenizer.joint))
            self.corpora = encoded_corpora(cfg, self.run, self.tokenizer, self.log)
        self.dev_sets = encode_dev(cfg, raw, self.tokenizer, self.log)
        if self.dist.is_main:
            atomic_write_text(self.run.corpora, json.dumps(corpora_summary(self.corpora), indent=1) + "\n")
            atomic_write_text(self.run.config, dump_config(cfg))  # written last: its presence marks a started run
        # each rank its own dropout stream (rank 0 that of a single process); DDP gives every rank rank 0's weights
        seed_everything(cfg.seed, self.dist.rank)
        self.specials = self.tokenizer.specials
        self.tgt_vocab = self.tokenizer.tgt.vocab_size
        tags = {t for c in self.corpora for t in (c.tag.src, c.tag.tgt) if t is not None}
        protected = sorted({self.specials.pad, self.specials.bos, self.specials.eos, *tags})
        self.protected_ids = torch.tensor(protected, device=self.device)  # never dropped by word dropout
        self.model: Seq2SeqModel = build_model(
            cfg.model, self.tokenizer.src.vocab_size, self.tokenizer.tgt.vocab_size, self.specials
        ).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.budget_s = cfg.train.max_minutes * 60
        self.clock_before = 0.0  # seconds of the time budget that earlier sessions of this run spent
        self.budget_share = 0.0  # share of the time budget spent, agreed by all ranks before each update
        self.started = time.monotonic()
        self.scheduler = build_scheduler(self.optimizer, cfg.train, lambda: self.budget_share)
        self.sampler = corpus_mix(self.corpora, cfg.train.batch_tokens, cfg.seed)
        self.corpus_tokens = [0] * len(self.corpora)  # target tokens drawn from each corpus, over the run
        self.window_corpus_tokens = [0] * len(self.corpora)  # ... since the last log line
        self.probe = probe
        self.window_flops = 0.0  # matmul FLOPs of the updates since the last log line (all ranks' batches)
        self.train_flops = 0.0  # ... and of this session, with the seconds they took
        self.train_seconds = 0.0
        self.step = 0
        self.best_bleu: float | None = None
        self.stale_evals = 0
        self.skipped_updates = 0
        self.skipped_in_a_row = 0
        self.loss_sum = torch.zeros((), device=self.device)
        self.nll_sum = torch.zeros((), device=self.device)
        self.last_eval: dict[str, float] | None = None
        self.tensorboard = _tensorboard_writer(self.run, self.log) if cfg.train.tensorboard else None
        if resume:
            self._restore(self.run.checkpoint("last"))
        elif init_from is not None:
            state = load_checkpoint(init_from)
            load_model_weights(self.model, state["model"], Path(init_from))
            self.log(f"initialised the weights from {init_from}")
        # the module that trains: DistributedDataParallel over the ranks of a torchrun job, else the model itself
        self.train_model: torch.nn.Module = self.model
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        processes = f", {self.dist.world_size} processes" if self.dist.enabled else ""
        per_epoch = self.sampler.batches_per_epoch
        if len(self.corpora) == 1:
            batches = f"{per_epoch[0]} batches per epoch"
        else:
            batches = "batches per epoch and share of the batches: " + ", ".join(
                f"{c.name} {n} ({share:.0%})"
                for c, n, share in zip(self.corpora, per_epoch, batch_shares(self.corpora), strict=True)
            )
        self.log(
            f"model: {cfg.model.kind}, {self.model.num_parameters():,} parameters; device {self.device}, "
            f"{self.precision}{processes}; {batches}, padding {self.sampler.padding_fraction():.1%}"
        )

    # -- logging ------------------------------------------------------------------------------------------------------
    def log(self, text: str) -> None:
        """A message for the user and the run's train.log (from rank 0 only)."""
        if not self.dist.is_main:
            return
        self.reporter.message(text)
        self.run.root.mkdir(parents=True, exist_ok=True)
        with open(self.run.log, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def _metrics(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.run.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in ("type", "step") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{record['type']}/{key}", value, record["step"])
            self.tensorboard.flush()

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def _checkpoint_state(self, rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """What a checkpoint holds: the model and metadata; with `rng` (every rank's), all that exact resume needs."""
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "step": self.step,
            "config": config_to_dict(self.cfg),
            "seqtool_version": __version__,
        }
        if self.last_eval:
            state["dev_bleu"] = self.last_eval.get("dev_bleu")
            state["dev_loss"] = self.last_eval.get("dev_loss")
        if rng is not None:
            state.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                sampler=self.sampler.state_dict(),
                corpus_tokens=list(self.corpus_tokens),
                clock_s=self.clock_before + time.monotonic() - self.started,
                best_bleu=self.best_bleu,
                stale_evals=self.stale_evals,
                rng=rng,
            )
        return state

    def _save_last(self) -> None:
        """Write last.pt, the resume point (every rank must call it: it gathers every rank's RNG state)."""
        rng = all_rng_states(self.dist)
        if not self.dist.is_main:
            return
        self._check_finite()
        save_checkpoint(self.run.checkpoint("last"), self._checkpoint_state(rng))

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path)
        load_model_weights(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.clock_before = float(state.get("clock_s", 0.0))
        self.budget_share = self.clock_before / self.budget_s if self.budget_s else 0.0
        self.scheduler.load_state_dict(state["scheduler"])
        changed = apply_hyperparameters(self.optimizer, self.scheduler, self.cfg.train)
        try:
            self.sampler.load_state_dict(state["sampler"])
        except ValueError as exc:
            raise CheckpointError(
                f"{path}: cannot resume: {exc}",
                "resume with the corpora the run was started with (data.train), or start a new run with --init-from",
            ) from None
        self.corpus_tokens = [int(n) for n in state.get("corpus_tokens", [0] * len(self.corpora))]
        self.step = int(state["step"])
        self.best_bleu = state.get("best_bleu")
        self.stale_evals = int(state.get("stale_evals", 0))
        restore_rank_rng(state["rng"], self.dist, path)
        if self.dist.is_main:
            truncate_metrics(self.run.metrics, self.step)
        self.log(f"resumed from {path} at step {self.step}")
        if changed:
            self.log(f"the optimizer follows the given config from step {self.step + 1}: " + "; ".join(changed))

    def _save_step(self) -> None:
        if not self.dist.is_main:
            return
        self._check_finite()
        save_checkpoint(self.run.checkpoint(f"step_{self.step}"), self._checkpoint_state())
        keep = self.cfg.train.keep_last
        if keep:
            for old in self.run.step_checkpoints()[:-keep]:
                old.unlink(missing_ok=True)

    def _average_last(self, n: int) -> None:
        """Average the newest n step checkpoints into averaged.pt; it becomes best.pt if its dev BLEU is higher."""
        if not self.dist.is_main:
            return
        paths = self.run.step_checkpoints()[-n:]
        if len(paths) < 2:
            self.log(f"average_last: only {len(paths)} step checkpoint(s), nothing to average")
            return
        state = average_checkpoint_files(paths)
        trained = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(state["model"])
        message = f"averaged {len(paths)} checkpoints ({paths[0].stem} .. {paths[-1].stem})"
        if self.dev_sets:
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
        """Dev loss/perplexity (teacher forcing, no smoothing) and dev BLEU (greedy, detokenised) of every dev set.

        With several dev sets, each has its `dev_loss.NAME` and `dev_bleu.NAME`, and `dev_loss`/`dev_bleu` are those
        of data.select_on (a set's name, or the mean over the sets): what picks best.pt and counts for patience.
        """
        self.model.eval()
        results = {dev.name: self._evaluate_set(dev) for dev in self.dev_sets}
        self.model.train()
        if len(results) == 1:
            return next(iter(results.values()))
        out: dict[str, float] = {}
        for name, result in results.items():
            out[f"dev_loss.{name}"] = result["dev_loss"]
            out[f"dev_bleu.{name}"] = result["dev_bleu"]
        select = self.cfg.data.select_on
        if select == "mean":
            dev_loss = sum(r["dev_loss"] for r in results.values()) / len(results)
            dev_bleu = sum(r["dev_bleu"] for r in results.values()) / len(results)
        else:
            dev_loss, dev_bleu = results[select]["dev_loss"], results[select]["dev_bleu"]
        return {"dev_loss": dev_loss, "dev_ppl": math.exp(min(dev_loss, 50.0)), "dev_bleu": dev_bleu, **out}

    def _evaluate_set(self, dev: DevSet) -> dict[str, float]:
        nll_total, tokens = 0.0, 0
        src, tgt = dev.src, dev.tgt
        order = sorted(range(len(src)), key=lambda i: (len(tgt[i]), len(src[i])))
        rows = max(1, self.cfg.train.batch_tokens // 64)
        for start in range(0, len(order), rows):
            idx = order[start : start + rows]
            batch = make_batch([src[i] for i in idx], [tgt[i] for i in idx], self.specials, tgt_tag=dev.tag.tgt)
            batch = batch.to(self.device)
            keep = batch.tgt_out != self.specials.pad
            with autocast(self.device, self.precision):
                logits = self.model(batch.src, batch.tgt_in, keep)
            _, nll = label_smoothed_nll(logits, batch.tgt_out[keep], self.specials.pad, 0.0)
            nll_total += float(nll)
            tokens += batch.tgt_tokens
        search_cfg = SearchConfig.from_decode(self.cfg.decode, beam=1, nbest=1, length_penalty=0.0)  # greedy
        hyps = translate_ids(self.model, src, search_cfg, self.cfg.decode.batch_tokens, self.device, self.precision,
                             prefixes=dev.tag.prefixes(None, len(src)))  # fmt: skip
        texts = self.tokenizer.tgt.decode([h[0].tokens if h else [] for h in dev.tag.strip(hyps)])
        dev_loss = nll_total / max(tokens, 1)
        return {
            "dev_loss": dev_loss,
            "dev_ppl": math.exp(min(dev_loss, 50.0)),
            "dev_bleu": corpus_bleu(texts, dev.refs),
        }

    def _validate_and_save(self) -> None:
        """Dev loss and BLEU (rank 0), best.pt when BLEU improved, then last.pt (every rank takes part)."""
        if self.dist.is_main:
            self._check_finite()
        if self.dist.is_main and self.dev_sets:
            self.last_eval = self.evaluate()
            bleu = self.last_eval["dev_bleu"]
            improved = self.best_bleu is None or bleu > self.best_bleu
            self.stale_evals = 0 if improved else self.stale_evals + 1
            if improved:
                self.best_bleu = bleu
                save_checkpoint(self.run.checkpoint("best"), self._checkpoint_state())
            self._metrics({"type": "eval", "step": self.step, **self.last_eval, "best_bleu": self.best_bleu})
            per_set = drawn = ""
            if len(self.dev_sets) > 1:
                scores = (f"{d.name} {self.last_eval[f'dev_bleu.{d.name}']:.2f}" for d in self.dev_sets)
                per_set = f" [{', '.join(scores)}; {self.cfg.data.select_on}]"
            if len(self.corpora) > 1:
                total = sum(self.corpus_tokens) or 1
                shares = (f"{c.name} {n / total:.1%}" for c, n in zip(self.corpora, self.corpus_tokens, strict=True))
                drawn = "; target tokens drawn so far: " + ", ".join(shares)
            self.log(
                f"step {self.step}: dev loss {self.last_eval['dev_loss']:.3f} (ppl {self.last_eval['dev_ppl']:.1f}), "
                f"dev BLEU {bleu:.2f}{per_set}" + (" (best)" if improved else f" (best {self.best_bleu:.2f})") + drawn
            )
        self._save_last()

    # -- the loop -----------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until max_steps, max_minutes, patience or a stop signal; returns how it ended.

        Whatever ends it, the final step is logged and saved, and validated unless a signal ended the run.
        """
        tcfg = self.cfg.train
        probes = [self._probe()] if self.probe else []
        self.model.train()
        batches = self.sampler.with_copy()
        flag = {"stop": False}
        self.started = time.monotonic()
        deadline = self.started + self.budget_s - self.clock_before if tcfg.max_minutes else math.inf
        if tcfg.max_minutes and self.clock_before >= self.budget_s:
            self.log(
                f"the run's time budget (train.max_minutes = {tcfg.max_minutes:g}) is spent; to train on, resume "
                f"with a larger one, e.g. --set train.max_minutes={2 * tcfg.max_minutes:g}"
            )
        self.window_start, self.window_tokens = time.monotonic(), 0
        self.window_corpus_tokens = [0] * len(self.corpora)
        self.logged_step = self.saved_step = self.step
        stop_reason = "max_steps"
        self.reporter.start(tcfg.max_steps, self.step, deadline if tcfg.max_minutes else None)
        left_together = False
        try:
            with _stop_on_signals(flag, keep_after_failure=self.dist.enabled):
                while self.step < tcfg.max_steps:
                    reason = self._agreed_stop(flag["stop"])
                    if reason:
                        stop_reason = reason
                        break
                    tokens = self._update(self._next_batches(batches, tcfg.accum_steps))
                    if tokens is None:  # a skipped non-finite update: no step was made, so nothing is due
                        continue
                    self.window_tokens += tokens
                    if self._after_update():
                        stop_reason = "patience"
                        break
                self._finish(stop_reason)
                # rank 0 may still be validating or saving: the ranks leave the job together, since a rank that
                # tears down its process group while a peer is still connected aborts inside gloo
                barrier(self.dist)
                left_together = True
        except RuntimeError as exc:
            if self.dist.enabled and is_peer_failure(exc):  # DDP's gradient all-reduce lost a peer
                raise peer_failure(exc) from None
            raise
        finally:
            self.reporter.close()
            # Tearing down a process group that lost a peer can abort inside gloo before the error is reported;
            # after a failure the process is about to exit anyway, so only a clean end leaves the group.
            if left_together:
                shutdown(self.dist)
        if stop_reason != "interrupted":
            self.log(f"finished at step {self.step} ({stop_reason})")
        if self.probe:
            probes.append(self._probe())
        gflops = self.train_flops / self.train_seconds / 1e9 if self.train_seconds > 0 else None
        result = TrainResult(
            self.run.root,
            self.step,
            stop_reason,
            self.best_bleu,
            self.last_eval,
            gflops,
            max(probes, default=None),
            self.dist.world_size,
        )
        if gflops is not None:
            fraction = result.of_probe()
            beside = f" ({fraction:.0%} of the {self._probe_dtype()} matmul probe)" if fraction is not None else ""
            self.log(f"matmul throughput {gflops:,.0f} GFLOP/s{beside}")
        return result

    def _probe_dtype(self) -> str:
        return "bf16" if self.precision == "bf16" else "fp32"

    def _probe(self) -> float:
        """The matmul ceiling of this process's threads (or device) in the training precision, in GFLOP/s."""
        return matmul_gflops(self._probe_dtype(), torch.get_num_threads(), self.device)

    def _after_update(self) -> bool:
        """What is due after an update that made step `self.step`: log, step checkpoint, validation (with last.pt).
        Returns whether patience ran out."""
        tcfg = self.cfg.train
        self.reporter.advance(self.step)
        if self.step % tcfg.log_every == 0:
            self._log_window()
        if tcfg.save_every and self.step % tcfg.save_every == 0:
            self._save_step()
        if self.step % tcfg.eval_every == 0:
            self._validate_and_save()
            self.saved_step = self.step
            self.window_start = time.monotonic()  # validation time is not training throughput
            return broadcast_flag(self._out_of_patience(), self.dist)
        return False

    def _finish(self, stop_reason: str) -> None:
        """The end of the run: log the steps since the last log line, save (and validate) the final step."""
        if self.logged_step != self.step:
            self._log_window()
        if stop_reason == "interrupted":
            if self.saved_step != self.step:
                self._save_last()
            self.log(
                f"interrupted at step {self.step}; saved {self.run.checkpoint('last')}. "
                f"Resume with: seqtool train --resume {self.run.root}"
            )
            return
        if self.saved_step != self.step:
            self._validate_and_save()
        if self.cfg.train.average_last:
            self._average_last(self.cfg.train.average_last)

    def _log_window(self) -> None:
        seconds = time.monotonic() - self.window_start
        self._log_train(self.window_tokens, seconds, self.started)
        self.train_flops += self.window_flops
        self.train_seconds += seconds
        self.window_start, self.window_tokens, self.window_flops = time.monotonic(), 0, 0.0
        self.logged_step = self.step

    def _update(self, group: list[Batch]) -> int | None:
        """One optimizer update from the batches of `group` (gradient accumulation); returns its target tokens.

        With train.skip_nonfinite, an update whose loss is NaN/inf is dropped (its data is consumed, the step count
        does not move) and None returned.
        """
        tcfg = self.cfg.train
        update_loss = torch.zeros((), device=self.device)
        update_nll = torch.zeros((), device=self.device)
        # DDP averages gradients over the ranks; each rank's loss is already a share of the global update's sum
        scale = float(self.dist.world_size)
        for index, batch in enumerate(group):
            last = index == len(group) - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.train_model.no_sync()
            src = drop_words(batch.src, tcfg.src_word_dropout, self.specials.unk, self.protected_ids)
            tgt_in = drop_words(batch.tgt_in, tcfg.tgt_word_dropout, self.specials.unk, self.protected_ids)
            with sync:
                loss, nll = batch_loss(self.train_model, src, tgt_in, batch.tgt_out, self.specials.pad,
                                       tcfg.label_smoothing, self.device, self.precision)  # fmt: skip
                # normalised by the tokens of the whole update, so N accumulated batches = one big batch
                (loss * (scale / batch.update_tokens)).backward()
            update_loss += loss.detach()  # kept on the device: no host sync until the next log line
            update_nll += nll.detach()
        if tcfg.skip_nonfinite and not self._finite_everywhere(update_loss):  # a host sync, only with this option
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            self.skipped_in_a_row += 1
            self.log(f"skipped an update with a non-finite loss after step {self.step} ({self.skipped_updates} so far)")
            if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                raise TrainingError(
                    f"{MAX_SKIPPED_IN_A_ROW} updates in a row had a non-finite loss at step {self.step}: giving up",
                    "lower train.lr or raise train.warmup; check the data",
                )
            return None
        self.skipped_in_a_row = 0
        if tcfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tcfg.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.loss_sum += update_loss
        self.nll_sum += update_nll
        return group[0].update_tokens  # target tokens of the whole update, every rank's share included

    def _finite_everywhere(self, loss: Tensor) -> bool:
        """Whether the update's loss is finite on every rank (all ranks must skip the same updates)."""
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss)) else 1.0])
        return all_reduce(bad, self.dist, op="max").item() == 0.0

    def _agreed_stop(self, interrupted: bool) -> str | None:
        """Why to stop before the next update, the same on every rank (a signal or the clock may reach one first).

        The ranks also agree on the time budget spent (the largest clock), which the learning-rate cool-down reads:
        every rank must apply the same learning rate.
        """
        spent = self.clock_before + time.monotonic() - self.started
        flags = torch.tensor([float(interrupted), spent], dtype=torch.float64)
        if self.dist.enabled:
            all_reduce(flags, self.dist, op="max")
        if self.budget_s:
            self.budget_share = min(1.0, float(flags[1]) / self.budget_s)
        if flags[0]:
            return "interrupted"
        return "max_minutes" if self.budget_s and float(flags[1]) >= self.budget_s else None

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

    def _next_batches(self, batches: Iterator[tuple[int, int, list[int]]], count: int) -> list[Batch]:
        """This rank's `count` batches of one update, on the device, each knowing the update's total target tokens.

        An update takes count × world_size batches from the (identical on every rank) sampler; rank r trains on
        batches r, r + world_size, ... So N processes with accum_steps A see what one process with accum_steps N × A
        sees, batch for batch. Each batch comes from one corpus (see `CorpusMix`), its pairs tagged with the
        corpus's target language when it has one.
        """
        world, rank = self.dist.world_size, self.dist.rank
        update = list(islice(batches, count * world))
        total = 0
        for k, copy, idx in update:
            corpus, encoded = self.corpora[k], self.corpora[k].encoding(copy)
            # from the cache's offsets: no sequence is read for the counts; + </s> (<s> in) and the tag, if any
            src_lengths = encoded.src_lengths[idx] + 1 + (corpus.tag.src is not None)
            tgt_lengths = encoded.tgt_lengths[idx] + 1 + (corpus.tag.tgt is not None)
            self.window_flops += training_flops(self.cfg.model, src_lengths, tgt_lengths, self.tgt_vocab)
            tokens = int(tgt_lengths.sum())
            self.corpus_tokens[k] += tokens
            self.window_corpus_tokens[k] += tokens
            total += tokens
        group = []
        for k, copy, idx in update[rank::world]:
            corpus = self.corpora[k]
            src, tgt = corpus.encoding(copy).src_seqs, corpus.encoding(copy).tgt_seqs
            group.append(
                make_batch([src[i] for i in idx], [tgt[i] for i in idx], self.specials, corpus.tag.src, corpus.tag.tgt)
            )
        for b in group:
            b.update_tokens = total
        return [b.to(self.device) for b in group]

    def _log_train(self, tokens: int, seconds: float, started: float) -> None:
        all_reduce(self.loss_sum, self.dist)  # the other ranks' shares of the interval
        all_reduce(self.nll_sum, self.dist)
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
            "gflops": self.window_flops / max(seconds, 1e-9) / 1e9,  # matmul FLOPs counted from the real lengths
            "elapsed_s": time.monotonic() - started,
        }
        if len(self.corpora) > 1:  # the share of target tokens drawn from each corpus, in this window and so far
            window, run = sum(self.window_corpus_tokens) or 1, sum(self.corpus_tokens) or 1
            for corpus, drawn, so_far in zip(self.corpora, self.window_corpus_tokens, self.corpus_tokens, strict=True):
                record[f"share.{corpus.name}"] = drawn / window
                record[f"run_share.{corpus.name}"] = so_far / run
        self.window_corpus_tokens = [0] * len(self.corpora)
        self._metrics(record)
        self.reporter.update({"loss": loss, "tok_s": record["tgt_tok_s"], "lr": record["lr"]})


def train(cfg: Config, run_dir: Path, **kwargs: Any) -> TrainResult:
    """Set up a run directory (or resume one) and train; see `Trainer`."""
    return Trainer(cfg, run_dir, **kwargs).fit()
