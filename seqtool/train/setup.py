"""Setting up a training run: the run directory, the tokenizer, the data checks, the encoded corpus cache."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqtool.config import Config
from seqtool.data.corpus import check_utf8, read_parallel
from seqtool.data.dataset import EncodedCorpus, check_line_counts, open_or_build
from seqtool.errors import CheckpointError, ConfigError, DataError
from seqtool.rundir import RunDir
from seqtool.tokenizer import Tokenizer, TokenizerSpec, train_sentencepiece

SMALL_CORPUS_BYTES = 8_000_000  # below this, the corpus cache is encoded in one process


@dataclass
class EncodedData:
    """Training (filtered) and dev pairs as piece ids."""

    train_src: Sequence[Sequence[int]]  # ids read from the on-disk cache (seqtool.data.dataset), indexable like lists
    train_tgt: Sequence[Sequence[int]]
    dev_src: list[list[int]]
    dev_tgt: list[list[int]]
    dev_refs: list[str]


def prepare_run_dir(run: RunDir, resume: bool, overwrite: bool) -> None:
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


def ensure_tokenizer(cfg: Config, run: RunDir, log: Any) -> Tokenizer:
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
    """The dev text, read (and checked) before anything is trained; the training files are checked, not held."""

    dev_src: list[str]
    dev_tgt: list[str]


def read_data(cfg: Config) -> RawData:
    """Check the training files (existence, line counts, UTF-8, streamed) and read the dev files, before any set-up."""
    for key in ("train_src", "train_tgt", "dev_src", "dev_tgt"):
        name = getattr(cfg.data, key)
        if name and not Path(name).exists():
            raise DataError(
                f"data.{key}: file not found: {name}", "paths in a config are relative to the current directory"
            )
    errors = cfg.data.encoding_errors
    check_line_counts(Path(cfg.data.train_src), Path(cfg.data.train_tgt))
    if errors == "strict":
        check_utf8(cfg.data.train_src)
        check_utf8(cfg.data.train_tgt)
    dev_src: list[str] = []
    dev_tgt: list[str] = []
    if cfg.data.dev_src:
        dev_src, dev_tgt = read_parallel(cfg.data.dev_src, cfg.data.dev_tgt, errors)
        if cfg.train.eval_max_sentences:
            dev_src, dev_tgt = dev_src[: cfg.train.eval_max_sentences], dev_tgt[: cfg.train.eval_max_sentences]
    return RawData(dev_src, dev_tgt)


def unk_rate(ids: list[list[int]], unk: int) -> float:
    """Share of pieces that are <unk>."""
    total = sum(len(seq) for seq in ids)
    return sum(seq.count(unk) for seq in ids) / total if total else 0.0


def cache_workers(cfg: Config) -> int:
    """Encoding processes for the corpus cache: data.workers, else one per core; one for small corpora (a pool's
    start-up costs more than it saves below a few MB)."""
    size = sum(Path(p).stat().st_size for p in (cfg.data.train_src, cfg.data.train_tgt))
    if size < SMALL_CORPUS_BYTES:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cfg.data.workers or cores


def encoded_corpus(cfg: Config, run: RunDir, tokenizer: Tokenizer, log: Any) -> EncodedCorpus:
    """The training corpus as ids read from the on-disk cache, built (in parallel) when missing or stale."""
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run.root / "cache"
    corpus, report, built = open_or_build(
        cache_dir,
        cfg.data.train_src,
        cfg.data.train_tgt,
        tokenizer.src.path,
        None if tokenizer.joint else tokenizer.tgt.path,
        cfg.data.max_len,
        cfg.data.max_ratio,
        workers=cache_workers(cfg),
        encoding_errors=cfg.data.encoding_errors,
    )
    log(f"training data: {report.summary()}; encoded cache {'built' if built else 'reused'} in {cache_dir}")
    if len(corpus) == 0:
        raise DataError(
            f"no training pairs left after filtering {cfg.data.train_src} / {cfg.data.train_tgt}",
            "check the files, or raise data.max_len",
        )
    return corpus


def encode_data(cfg: Config, raw: RawData, corpus: EncodedCorpus, tokenizer: Tokenizer, log: Any) -> EncodedData:
    data = EncodedData(corpus.src_seqs, corpus.tgt_seqs, [], [], raw.dev_tgt)
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


def prepare(cfg: Config, run_dir: Path, log: Any) -> EncodedCorpus:
    """Check the data, train the tokenizer where the config names one that does not exist yet, and build the encoded
    corpus cache: what `seqtool train` would do first, ahead of time (e.g. before a multi-node run)."""
    named = cfg.tokenizer.model if cfg.tokenizer.joint else cfg.tokenizer.src_model and cfg.tokenizer.tgt_model
    if not named:
        raise ConfigError(
            "seqtool prepare needs the tokenizer's file named in the config (tokenizer.model, or src_model and "
            "tgt_model when joint is false)",
            "name the file to use or to create, e.g. --set tokenizer.model=data/spm.model, and train with the same "
            "--set (a tokenizer trained by `seqtool train` itself lives in its run directory)",
        )
    raw = read_data(cfg)
    run = RunDir(Path(run_dir))
    run.root.mkdir(parents=True, exist_ok=True)
    tokenizer = ensure_tokenizer(cfg, run, log)
    corpus = encoded_corpus(cfg, run, tokenizer, log)
    log(f"dev data: {len(raw.dev_src)} pairs" if raw.dev_src else "no dev data")
    return corpus
