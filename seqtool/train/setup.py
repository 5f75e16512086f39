"""Setting up a training run: the run directory, the tokenizer, the data checks, the encoded corpus cache."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqtool.config import Config, CorpusConfig, DevSetConfig
from seqtool.data.batching import BatchSampler, CorpusMix
from seqtool.data.corpus import check_utf8, read_parallel
from seqtool.data.dataset import EncodedCorpus, check_line_counts, open_or_build
from seqtool.data.subword import SubwordSampling
from seqtool.decode.languages import LanguageTag, corpus_tag
from seqtool.errors import CheckpointError, ConfigError, DataError
from seqtool.rundir import RunDir
from seqtool.tokenizer import Tokenizer, TokenizerSpec, language_tag, train_sentencepiece

SMALL_CORPUS_BYTES = 8_000_000  # below this, the corpus cache is encoded in one process


@dataclass
class TrainCorpus:
    """One training corpus: its encoded pairs (read from the on-disk cache) and how batches are drawn from it."""

    name: str
    weight: float
    tag: LanguageTag  # its target language's tag, on the side data.tag_side says (neither without tags)
    corpus: EncodedCorpus  # the first (or only) encoding: its filter report describes the corpus
    copies: list[EncodedCorpus] = field(default_factory=list)  # every encoding, the first included (subword sampling)

    def encoding(self, copy: int) -> EncodedCorpus:
        """The encoding a batch of sampler copy `copy` indexes."""
        return self.copies[copy] if self.copies else self.corpus


@dataclass
class DevSet:
    """One dev set as piece ids and its reference text; a source-side tag is in `src` already, a target-side one is
    `tag.tgt` (put in front of the targets for the loss, forced when translating)."""

    name: str
    src: list[list[int]]
    tgt: list[list[int]]
    refs: list[str]
    tag: LanguageTag = field(default_factory=LanguageTag)


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
    for path in (run.checkpoints, run.config, run.metrics, run.log, run.corpora):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for spm_file in [*run.root.glob("spm*.model"), *run.root.glob("spm*.vocab")]:
        spm_file.unlink()
    run.checkpoints.mkdir(parents=True, exist_ok=True)


def corpus_keys(cfg: Config) -> list[tuple[str, str]]:
    """The config keys of each training corpus's source and target file (for error messages)."""
    if cfg.data.train:
        return [(f"data.train[{i}].src", f"data.train[{i}].tgt") for i in range(len(cfg.data.train))]
    return [("data.train_src", "data.train_tgt")]


def ensure_tokenizer(cfg: Config, run: RunDir, log: Any) -> Tokenizer:
    """Copy the configured tokenizer(s) into the run directory, training them first where they do not exist.

    A tokenizer trained here sees every training corpus and keeps the language tags whole (user-defined symbols);
    either way, the source model must hold the tag of each target language.
    """
    corpora = cfg.data.corpora()
    tags = tuple(language_tag(lang) for lang in cfg.data.languages())
    tagged_side = "tgt" if cfg.data.tag_side == "target" else "src"
    spec = TokenizerSpec(
        vocab_size=cfg.tokenizer.vocab_size,
        model_type=cfg.tokenizer.type,
        character_coverage=cfg.tokenizer.character_coverage,
        input_sentence_size=cfg.tokenizer.input_sentence_size,
        seed=cfg.seed,
        user_symbols=tags,
    )
    src_dest, tgt_dest = run.tokenizer_paths(cfg.tokenizer.joint)
    src_files = [c.src for c in corpora]
    tgt_files = [c.tgt for c in corpora]
    if cfg.tokenizer.joint:
        sides = [(cfg.tokenizer.model, src_files + tgt_files, src_dest, spec)]
    else:
        untagged = dataclasses.replace(spec, user_symbols=())
        sides = [
            (cfg.tokenizer.src_model, src_files, src_dest, spec if tagged_side == "src" else untagged),
            (cfg.tokenizer.tgt_model, tgt_files, tgt_dest, spec if tagged_side == "tgt" else untagged),
        ]
    for configured, inputs, dest, side_spec in sides:
        if dest.exists():
            continue
        if configured and Path(configured).exists():
            shutil.copyfile(configured, dest)
            continue
        target = Path(configured) if configured else dest
        log(
            f"training a {spec.model_type} SentencePiece model ({spec.vocab_size} pieces) on {', '.join(inputs)}"
            + (f" with the tags {' '.join(side_spec.user_symbols)}" if side_spec.user_symbols else "")
        )
        model_path = train_sentencepiece(inputs, target.with_suffix(""), side_spec)
        if model_path != dest:
            shutil.copyfile(model_path, dest)
    tokenizer = Tokenizer.load(src_dest, tgt_dest)
    for lang in cfg.data.languages():
        corpus_tag(tokenizer, lang, cfg.data.tag_side)  # a tokenizer given without the tags fails here, naming it
    fits = (
        [("", tokenizer.src, src_files + tgt_files)]
        if tokenizer.joint
        else [
            ("source ", tokenizer.src, src_files),
            ("target ", tokenizer.tgt, tgt_files),
        ]
    )
    for side, model, files in fits:
        warning = vocabulary_warning(model.vocab_size, files, cfg.tokenizer.min_words_per_piece, side)
        if warning:
            log(warning)
    return tokenizer


def words_in(files: Sequence[str | Path], limit: int) -> int:
    """Whitespace-separated words in `files`, counted up to `limit` (a large corpus is not read through)."""
    count = 0
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                count += len(line.split())
                if count >= limit:
                    return count
    return count


def vocabulary_warning(pieces: int, files: Sequence[str | Path], min_words_per_piece: float, side: str = "") -> str:
    """A warning when `files` hold fewer than `min_words_per_piece` words per piece of a `pieces`-piece vocabulary
    (small corpora train better with fewer pieces; recipes/README.md, "What matters on small data"), else ""."""
    if min_words_per_piece <= 0:
        return ""
    limit = math.ceil(pieces * min_words_per_piece)
    words = words_in(files, limit)
    if words >= limit:
        return ""
    suggested = max(100, int(words / min_words_per_piece) // 100 * 100)
    return (
        f"warning: the {side}vocabulary has {pieces:,} pieces for {words:,} training words ({words / pieces:.0f} a "
        f"piece, under tokenizer.min_words_per_piece {min_words_per_piece:g}): about {suggested:,} pieces usually "
        'train better on data this small (recipes/README.md, "What matters on small data"; '
        "--set tokenizer.vocab_size=...)"
    )


@dataclass
class RawData:
    """The dev text, read (and checked) before anything is trained; the training files are checked, not held."""

    dev: list[tuple[DevSetConfig, list[str], list[str]]]  # each dev set with its source and reference lines


def read_data(cfg: Config) -> RawData:
    """Check the training files (existence, line counts, UTF-8, streamed) and read the dev files, before any set-up."""
    files = [(key, getattr(c, side)) for c, keys in zip(cfg.data.corpora(), corpus_keys(cfg), strict=True)
             for key, side in zip(keys, ("src", "tgt"), strict=True)]  # fmt: skip
    for i, dev in enumerate(cfg.data.dev_sets()):
        files += [(f"data.dev[{i}].src" if cfg.data.dev else "data.dev_src", dev.src)]
        files += [(f"data.dev[{i}].tgt" if cfg.data.dev else "data.dev_tgt", dev.tgt)]
    for key, name in files:
        if not Path(name).exists():
            raise DataError(f"{key}: file not found: {name}", "paths in a config are relative to the current directory")
    errors = cfg.data.encoding_errors
    for corpus in cfg.data.corpora():
        check_line_counts(Path(corpus.src), Path(corpus.tgt))
        if errors == "strict":
            check_utf8(corpus.src)
            check_utf8(corpus.tgt)
    dev = []
    for dev_set in cfg.data.dev_sets():
        dev_src, dev_tgt = read_parallel(dev_set.src, dev_set.tgt, errors)
        if cfg.train.eval_max_sentences:
            dev_src, dev_tgt = dev_src[: cfg.train.eval_max_sentences], dev_tgt[: cfg.train.eval_max_sentences]
        dev.append((dev_set, dev_src, dev_tgt))
    return RawData(dev)


def unk_rate(ids: list[list[int]], unk: int) -> float:
    """Share of pieces that are <unk>."""
    total = sum(len(seq) for seq in ids)
    return sum(seq.count(unk) for seq in ids) / total if total else 0.0


def cache_workers(cfg: Config, corpus: CorpusConfig) -> int:
    """Encoding processes for a corpus's cache: data.workers, else one per core; one for small corpora (a pool's
    start-up costs more than it saves below a few MB)."""
    size = sum(Path(p).stat().st_size for p in (corpus.src, corpus.tgt))
    if size < SMALL_CORPUS_BYTES:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cfg.data.workers or cores


def subword_samplings(cfg: Config) -> list[SubwordSampling | None]:
    """How each encoding of a training corpus is made: [None] (the best segmentation), or data.subword_copies
    sampled encodings (data.subword_alpha > 0), seeded by the run's seed."""
    data = cfg.data
    if data.subword_alpha <= 0:
        return [None]
    return [SubwordSampling(data.subword_alpha, data.subword_nbest, cfg.seed, k) for k in range(data.subword_copies)]


def encoded_corpora(cfg: Config, run: RunDir, tokenizer: Tokenizer, log: Any) -> list[TrainCorpus]:
    """The training corpora as ids read from their on-disk caches (one per corpus), built (in parallel) when missing
    or stale."""
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run.root / "cache"
    out = []
    configs = cfg.data.corpora()
    for i, (corpus_cfg, keys) in enumerate(zip(configs, corpus_keys(cfg), strict=True)):
        name = f" {corpus_cfg.name}" if cfg.data.train else ""
        copies = []
        for sampling in subword_samplings(cfg):
            corpus, report, built = open_or_build(
                cache_dir,
                corpus_cfg.src,
                corpus_cfg.tgt,
                tokenizer.src.path,
                None if tokenizer.joint else tokenizer.tgt.path,
                cfg.data.max_len,
                cfg.data.max_ratio,
                workers=cache_workers(cfg, corpus_cfg),
                encoding_errors=cfg.data.encoding_errors,
                sampling=sampling,
            )
            copy = f" (sampled encoding {sampling.copy + 1} of {cfg.data.subword_copies})" if sampling else ""
            log(f"training data{name}{copy}: {report.summary()}; encoded cache {'built' if built else 'reused'} in "
                f"{cache_dir}")  # fmt: skip
            if len(corpus) == 0:
                where = f"data.train[{i}] ({corpus_cfg.name})" if cfg.data.train else "the training data"
                raise DataError(
                    f"{where}: no training pairs left after filtering {corpus_cfg.src} / {corpus_cfg.tgt} ({keys[0]})",
                    "check the files, or raise data.max_len",
                )
            copies.append(corpus)
        tag = corpus_tag(tokenizer, corpus_cfg.tgt_lang, cfg.data.tag_side)
        out.append(TrainCorpus(corpus_cfg.name, corpus_cfg.weight, tag, copies[0], copies))
    return out


def encode_dev(cfg: Config, raw: RawData, tokenizer: Tokenizer, log: Any) -> list[DevSet]:
    """The dev sets as piece ids, each tagged with its target language as the training corpora are; warns about a
    high <unk> rate."""
    out = []
    for dev_cfg, src_lines, tgt_lines in raw.dev:
        src = tokenizer.src.encode(src_lines)
        tag = corpus_tag(tokenizer, dev_cfg.tgt_lang, cfg.data.tag_side)
        if tag.src is not None:
            src = [[tag.src, *ids] for ids in src]
        dev = DevSet(dev_cfg.name, src, tokenizer.tgt.encode(tgt_lines), tgt_lines, tag)
        rates = {
            side: unk_rate(ids, tokenizer.specials.unk) for side, ids in (("source", dev.src), ("target", dev.tgt))
        }
        name = f" {dev.name}" if len(raw.dev) > 1 else ""
        log(
            f"dev data{name}: {len(src_lines)} pairs; <unk> rate {rates['source']:.2%} source, "
            f"{rates['target']:.2%} target"
        )
        for side, rate in rates.items():
            if rate > cfg.data.unk_warn:
                log(
                    f"warning: {rate:.1%} of the dev{name} {side} pieces are <unk>: the tokenizer does not fit this "
                    "data (another language or script?); check tokenizer.model or raise tokenizer.character_coverage"
                )
        out.append(dev)
    return out


def prepare(cfg: Config, run_dir: Path, log: Any) -> list[TrainCorpus]:
    """Check the data, train the tokenizer where the config names one that does not exist yet, and build the encoded
    corpus caches: what `seqtool train` would do first, ahead of time (e.g. before a multi-node run)."""
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
    corpora = encoded_corpora(cfg, run, tokenizer, log)
    log(", ".join(f"dev data {d.name}: {len(src)} pairs" for d, src, _ in raw.dev) if raw.dev else "no dev data")
    return corpora


def batch_shares(corpora: Sequence[TrainCorpus]) -> list[float]:
    """Each corpus's expected share of the batches (its weight over the sum)."""
    total = sum(c.weight for c in corpora)
    return [c.weight / total for c in corpora]


def corpora_summary(corpora: Sequence[TrainCorpus]) -> list[dict[str, Any]]:
    """Per corpus: name, weight, share of the batches, target-language tag and the filter report (RUN_DIR/corpora.json,
    shown by `seqtool info`)."""
    out = []
    for corpus, share in zip(corpora, batch_shares(corpora), strict=True):
        report = corpus.corpus.report
        out.append(
            {
                "name": corpus.name,
                "weight": corpus.weight,
                "batch_share": share,
                "tagged": corpus.tag != LanguageTag(),
                "pairs": report.total,
                "kept": report.kept,
                "dropped": {reason: n for reason, n in report.dropped.items() if n},
            }
        )
    return out


def corpus_mix(corpora: Sequence[TrainCorpus], batch_tokens: int, seed: int) -> CorpusMix:
    """The training batches: a length-bucketed sampler per corpus (the tagged side one piece longer; with subword
    sampling, each epoch on the next sampled encoding), mixed by weight. Corpus 0 is seeded as a run of one corpus (a
    single corpus trains as before); corpus k > 0 has its own seed, so corpora of equal lengths are not shuffled
    alike."""
    samplers = []
    for k, c in enumerate(corpora):
        src_extra, tgt_extra = int(c.tag.src is not None), int(c.tag.tgt is not None)
        lengths = [(e.src_lengths + src_extra, e.tgt_lengths + tgt_extra) for e in (c.copies or [c.corpus])]
        corpus_seed = seed if k == 0 else seed + 1_000_003 * k
        samplers.append(BatchSampler(*lengths[0], batch_tokens, corpus_seed, copies=lengths[1:]))
    return CorpusMix(samplers, [c.weight for c in corpora])
