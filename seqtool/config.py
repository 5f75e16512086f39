"""The YAML schema as typed objects: the single source of defaults, strict validation, `--set` overrides.

A config is read once, at the edge (`load_config`), into a `Config`; library code only ever sees the typed
objects. Every problem is a `ConfigError` naming the dotted key and, when it comes from a file, its line.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from seqtool.errors import ConfigError


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a default and a one-line description (shown in the config reference)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


def _section(factory: Any, help: str) -> Any:
    return field(default_factory=factory, metadata={"help": help})


@dataclass
class CorpusConfig:
    """One training corpus of `data.train`: its files, its share of the batches and its target-language tag."""

    name: str = _opt("", "the corpus's name, unique (in logs, metrics.jsonl and `seqtool info`)")
    src: str = _opt("", "source file, one sentence per line")
    tgt: str = _opt("", "target file, line-aligned with src")
    weight: float = _opt(1.0, "batches are drawn from the corpora in proportion to their weights (> 0)", min=0.0)
    tgt_lang: str = _opt("", "target language: its tag <2LANG> marks every pair (see data.tag_side); empty = no tag")


@dataclass
class DevSetConfig:
    """One development set of `data.dev`: validation loss and BLEU, reported by name."""

    name: str = _opt("", "the dev set's name, unique (dev_bleu.NAME in metrics.jsonl)")
    src: str = _opt("", "source file")
    tgt: str = _opt("", "target file (the reference)")
    tgt_lang: str = _opt("", "target language (a model trained with tags needs one per dev set)")


SINGLE_CORPUS_NAME = "train"  # the name of the corpus given as data.train_src/train_tgt
SINGLE_DEV_NAME = "dev"  # the name of the dev set given as data.dev_src/dev_tgt
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class DataConfig:
    """Line-aligned parallel text files: one training corpus (train_src/train_tgt) or several (train)."""

    train_src: str = _opt("", "training source file, one sentence per line (or several corpora: data.train)")
    train_tgt: str = _opt("", "training target file, line-aligned with train_src")
    train: list[CorpusConfig] = _opt(
        [], "several training corpora, each {name, src, tgt, weight, tgt_lang}; each batch comes from one corpus"
    )
    dev_src: str = _opt("", "development source file (validation loss and BLEU); empty = no validation")
    dev_tgt: str = _opt("", "development target file (reference)")
    dev: list[DevSetConfig] = _opt([], "several dev sets, each {name, src, tgt, tgt_lang}; BLEU reported per set")
    tag_side: Literal["source", "target"] = _opt(
        "source",
        "where a corpus's language tag goes: source = in front of every source sentence; target = as the first target "
        "token, forced when translating",
    )
    select_on: str = _opt("mean", "what picks best.pt and patience: a dev set's name, or mean (of the sets' BLEU)")
    max_len: int = _opt(128, "drop training pairs with more pieces than this on either side", min=1)
    max_ratio: float = _opt(0.0, "drop training pairs whose length ratio (in pieces) exceeds this; 0 = keep all", min=0)
    encoding_errors: Literal["strict", "replace"] = _opt(
        "strict", "invalid UTF-8 in the corpus: strict = an error naming file and line; replace = U+FFFD"
    )
    unk_warn: float = _opt(0.01, "warn when more than this share of dev pieces is <unk>", min=0.0, max=1.0)
    subword_alpha: float = _opt(
        0.0,
        "subword regularisation: > 0 segments the training pairs by sampling (Kudo, 2018), a segmentation drawn from"
        " the unigram tokenizer's n best with probability ∝ P^alpha (near 0: near uniform; large: near the best);"
        " dev and test keep the best segmentation; 0 = off",
        min=0.0,
    )
    subword_nbest: int = _opt(16, "segmentations a sampled one is drawn from (data.subword_alpha)", min=2)
    subword_copies: int = _opt(
        4, "sampled encodings of each training corpus in the cache; epoch e trains on copy e mod N", min=1
    )
    cache_dir: str = _opt("", "where the encoded training corpus is cached (id arrays on disk); empty = RUN_DIR/cache")
    workers: int = _opt(0, "processes encoding the corpus into the cache; 0 = one per core", min=0)

    def corpora(self) -> list[CorpusConfig]:
        """The training corpora, the single-pair form (train_src/train_tgt) as one named `train`."""
        if self.train:
            return list(self.train)
        if self.train_src or self.train_tgt:
            return [CorpusConfig(SINGLE_CORPUS_NAME, self.train_src, self.train_tgt)]
        return []

    def dev_sets(self) -> list[DevSetConfig]:
        """The dev sets, the single-pair form (dev_src/dev_tgt) as one named `dev`."""
        if self.dev:
            return list(self.dev)
        if self.dev_src:
            return [DevSetConfig(SINGLE_DEV_NAME, self.dev_src, self.dev_tgt)]
        return []

    def languages(self) -> list[str]:
        """The target languages the corpora are tagged with (sorted; empty for a model without tags)."""
        return sorted({c.tgt_lang for c in self.corpora() if c.tgt_lang})


@dataclass
class TokenizerConfig:
    """SentencePiece settings; `train` trains the model(s) when the file(s) do not exist yet."""

    joint: bool = _opt(True, "one model for both sides (needed for shared embeddings)")
    model: str = _opt("", "joint SentencePiece model file; empty = spm.model inside the run directory")
    src_model: str = _opt("", "source model when joint is false; empty = spm.src.model in the run directory")
    tgt_model: str = _opt("", "target model when joint is false; empty = spm.tgt.model in the run directory")
    type: Literal["unigram", "bpe"] = _opt("unigram", "SentencePiece model type")
    vocab_size: int = _opt(8000, "number of pieces (special symbols included)", min=8)
    character_coverage: float = _opt(1.0, "share of characters covered by the vocabulary", min=0.5, max=1.0)
    input_sentence_size: int = _opt(2_000_000, "sentences sampled to train the tokenizer", min=1)
    min_words_per_piece: float = _opt(
        20.0, "seqtool train warns when the training text has fewer words than this per piece (0 = never)", min=0.0
    )


@dataclass
class TransformerConfig:
    """The Transformer encoder–decoder."""

    kind: Literal["transformer"] = _opt("transformer", "model family")
    d_model: int = _opt(256, "width of embeddings and layers", min=1)
    heads: int = _opt(4, "attention heads (must divide d_model)", min=1)
    ffn_dim: int = _opt(1024, "inner size of the feed-forward sub-layers", min=1)
    encoder_layers: int = _opt(3, "encoder layers", min=1)
    decoder_layers: int = _opt(3, "decoder layers", min=1)
    dropout: float = _opt(0.1, "dropout on embeddings, sub-layer outputs and FFN", min=0.0, below=1.0)
    attention_dropout: float = _opt(0.1, "dropout on attention weights", min=0.0, below=1.0)
    activation: Literal["relu", "gelu"] = _opt("relu", "FFN activation")
    pre_norm: bool = _opt(True, "layer norm before each sub-layer (true) or after the residual (false)")
    share_embeddings: bool = _opt(True, "one embedding matrix for source and target (needs a joint tokenizer)")
    tie_output: bool = _opt(True, "output projection shares the target embedding matrix")
    max_positions: int = _opt(1024, "longest sequence the positional encoding is prepared for", min=1)


@dataclass
class RNNConfig:
    """The recurrent encoder–decoder (GRU or LSTM), optionally with attention."""

    kind: Literal["rnn"] = _opt("rnn", "model family")
    cell: Literal["gru", "lstm"] = _opt("gru", "recurrent cell")
    embed_dim: int = _opt(256, "embedding size", min=1)
    hidden_size: int = _opt(512, "hidden state size of encoder (per direction) and decoder", min=1)
    encoder_layers: int = _opt(1, "encoder layers", min=1)
    decoder_layers: int = _opt(1, "decoder layers", min=1)
    bidirectional: bool = _opt(True, "bidirectional encoder")
    attention: Literal["none", "bahdanau", "luong"] = _opt("bahdanau", "attention over encoder states")
    dropout: float = _opt(0.2, "dropout on embeddings and between layers", min=0.0, below=1.0)
    share_embeddings: bool = _opt(False, "one embedding matrix for source and target (needs a joint tokenizer)")
    tie_output: bool = _opt(False, "output projection shares the target embedding matrix")


ModelConfig = TransformerConfig | RNNConfig
MODEL_KINDS: dict[str, type] = {"transformer": TransformerConfig, "rnn": RNNConfig}


@dataclass
class TrainConfig:
    """Optimisation, batching, validation and stopping."""

    max_steps: int = _opt(10000, "stop after this many optimizer updates", min=1)
    max_minutes: float = _opt(
        0.0,
        "stop after this many minutes of training (validation included, counted across resumes); 0 = no limit",
        min=0.0,
    )
    batch_tokens: int = _opt(4096, "token budget per batch (max of source and target tokens incl. padding)", min=1)
    lr: float = _opt(1e-3, "peak learning rate", min=0.0)
    schedule: Literal["inverse_sqrt", "constant", "linear"] = _opt(
        "inverse_sqrt", "learning-rate schedule after warm-up (linear: decays to 0 at max_steps)"
    )
    warmup: int = _opt(400, "linear warm-up steps to the peak learning rate", min=0)
    cooldown: float = _opt(
        0.0,
        "the last share of the run (of max_minutes, or of max_steps if it comes first) over which the learning rate "
        "falls linearly to 0 (by the clock under max_minutes: such a run is not bit-reproducible); 0 = none",
        min=0.0,
        max=1.0,
    )
    adam_betas: list[float] = _opt([0.9, 0.98], "Adam beta1, beta2")
    adam_eps: float = _opt(1e-8, "Adam epsilon", min=0.0)
    weight_decay: float = _opt(
        0.0, "decoupled weight decay (AdamW) of weight matrices; biases, norms and embeddings never decay", min=0.0
    )
    label_smoothing: float = _opt(0.1, "label smoothing of the cross-entropy", min=0.0, below=1.0)
    src_word_dropout: float = _opt(
        0.0, "word dropout: replace this share of source pieces by <unk> while training", min=0.0, below=1.0
    )
    tgt_word_dropout: float = _opt(
        0.0, "word dropout: replace this share of the decoder's input pieces by <unk> in training", min=0.0, below=1.0
    )
    clip_norm: float = _opt(1.0, "clip the gradient norm to this; 0 = no clipping", min=0.0)
    accum_steps: int = _opt(1, "batches whose gradients are summed into one update (effective batch × N)", min=1)
    log_every: int = _opt(50, "steps between progress/metrics lines", min=1)
    eval_every: int = _opt(500, "steps between validations (dev loss and BLEU)", min=1)
    eval_max_sentences: int = _opt(0, "translate at most this many dev sentences for dev BLEU; 0 = all", min=0)
    save_every: int = _opt(0, "steps between step_N.pt checkpoints besides best/last; 0 = none", min=0)
    keep_last: int = _opt(0, "keep only the newest N step_N.pt checkpoints; 0 = keep all", min=0)
    average_last: int = _opt(
        0, "at the end, average the last N step_N.pt checkpoints into averaged.pt (best.pt if its dev BLEU is)", min=0
    )
    patience: int = _opt(0, "stop when dev BLEU has not improved for this many validations; 0 = never", min=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = _opt("auto", "where to train (auto: cuda if available)")
    precision: Literal["fp32", "bf16"] = _opt("fp32", "bf16 autocast (CPU with AVX-512 bf16/AMX, or GPU)")
    skip_nonfinite: bool = _opt(False, "skip an update whose loss is NaN/inf (else: stop with a clear error)")
    threads: int = _opt(0, "CPU threads for torch; 0 = torch's default", min=0)
    tensorboard: bool = _opt(
        False, "also write TensorBoard scalars to RUN_DIR/tensorboard (needs the tensorboard package)"
    )


NBEST = 1  # hypotheses returned per sentence unless asked for more (translate --nbest)
LENGTH_PENALTY_KIND = "gnmt"  # the formula decode.length_penalty is the alpha of (a key of search.LENGTH_PENALTIES)
# sampling (translate --sample): top_k 0 and top_p 1.0 keep every token; temperature 0 is greedy search
SAMPLE_TOP_K = 0
SAMPLE_TOP_P = 1.0
SAMPLE_TEMPERATURE = 1.0
SAMPLE_SEED = 0


@dataclass
class DecodeConfig:
    """Translation settings (used for dev BLEU and as `translate`'s defaults)."""

    beam: int = _opt(5, "beam size; 1 = greedy", min=1)
    length_penalty: float = _opt(1.0, "GNMT length penalty alpha; 0 = raw log-probability", min=0.0)
    max_len_a: float = _opt(1.5, "maximum output length = a * source length + b", min=0.0)
    max_len_b: int = _opt(10, "maximum output length = a * source length + b", min=0)
    stop: Literal["heuristic", "exact"] = _opt(
        "heuristic",
        "beam search stops a sentence when the best live beam, ended now, scores below its worst finished one"
        " (heuristic), or only when no length could lift it above (exact: slower with a length penalty)",
    )
    batch_tokens: int = _opt(4000, "source-token budget per decoding batch", min=1)
    max_input_len: int = _opt(250, "source pieces per line; longer input lines are truncated, with a warning", min=1)


@dataclass
class Config:
    """A whole seqtool configuration."""

    name: str = _opt("", "run name (default: the config file's name)")
    seed: int = _opt(42, "seed of every random generator")
    data: DataConfig = _section(DataConfig, "corpus files")
    tokenizer: TokenizerConfig = _section(TokenizerConfig, "SentencePiece tokenizer")
    model: ModelConfig = _section(TransformerConfig, "model architecture (kind: transformer | rnn)")
    train: TrainConfig = _section(TrainConfig, "training")
    decode: DecodeConfig = _section(DecodeConfig, "decoding")


# ---------------------------------------------------------------------------------------------------------------------
# Building typed objects from plain data


class _Places:
    """Maps dotted keys to 'file:line' for error messages."""

    def __init__(self, source: str | None = None, lines: dict[str, int] | None = None) -> None:
        self.source = source
        self.lines = lines or {}
        self.overrides: set[str] = set()

    def where(self, dotted: str) -> str:
        if dotted in self.overrides:
            return " (from --set)"
        probe = dotted
        while probe:
            if probe in self.lines:
                return f" ({self.source}:{self.lines[probe]})"
            probe = probe.rpartition(".")[0]
        return f" (in {self.source})" if self.source else ""


def _line_map(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line number, from the YAML node tree."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                dotted = f"{prefix}{key_node.value}"
                lines[dotted] = key_node.start_mark.line + 1
                walk(value_node, dotted + ".")
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                dotted = f"{prefix.rstrip('.')}[{index}]"
                lines[dotted] = item.start_mark.line + 1
                walk(item, dotted + ".")

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin is list:
        item = typing.get_args(tp)[0]
        return "a list of mappings" if dataclasses.is_dataclass(item) else f"a list of {_type_name(item)}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, dotted: str, places: _Places) -> Any:
    """Check `value` against the annotation `tp`; return it converted (int -> float where a float is expected)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(
        f"{dotted}{places.where(dotted)}: expected {_type_name(tp)}, got {value!r}",
    )
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{dotted}{places.where(dotted)}: {value!r} is not one of: {', '.join(map(str, choices))}",
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item_tp,) = typing.get_args(tp)
        if dataclasses.is_dataclass(item_tp):
            return [_build(item_tp, v, f"{dotted}[{i}].", places) for i, v in enumerate(value)]
        return [_coerce(v, item_tp, f"{dotted}[{i}]", places) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad
        return str(value)
    raise TypeError(f"unsupported annotation {tp}")  # a schema bug, not a user error


def _check_range(value: Any, f: dataclasses.Field, dotted: str, places: _Places) -> None:
    meta = f.metadata
    where = places.where(dotted)
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{dotted}{where}: must be >= {meta['min']}, got {value}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{dotted}{where}: must be <= {meta['max']}, got {value}")
    if "below" in meta and value >= meta["below"]:
        raise ConfigError(f"{dotted}{where}: must be < {meta['below']}, got {value}")


def _unknown_key(key: str, valid: list[str], dotted: str, places: _Places, what: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key '{dotted}'{places.where(dotted)} in {what}", hint)


def _build(cls: type, raw: Any, prefix: str, places: _Places) -> Any:
    """Build dataclass `cls` from a mapping, strictly."""
    what = f"section '{prefix.rstrip('.')}'" if prefix else "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        where = places.where(prefix.rstrip(".")) if prefix else ""
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'}{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise _unknown_key(str(key), list(fields), dotted, places, what)
        tp = hints[key]
        if typing.get_origin(tp) in (Union, types.UnionType) and key == "model":
            values[key] = _build_model(value, dotted + ".", places)
        elif dataclasses.is_dataclass(tp):
            values[key] = _build(tp, value, dotted + ".", places)
        else:
            values[key] = _coerce(value, tp, dotted, places)
            _check_range(values[key], fields[key], dotted, places)
    return cls(**values)


def _build_model(raw: Any, prefix: str, places: _Places) -> ModelConfig:
    kind = raw.get("kind", "transformer") if isinstance(raw, dict) else "transformer"
    if kind not in MODEL_KINDS:
        dotted = prefix + "kind"
        raise ConfigError(f"{dotted}{places.where(dotted)}: {kind!r} is not one of: {', '.join(MODEL_KINDS)}")
    return _build(MODEL_KINDS[kind], raw, prefix, places)


def _validate(cfg: Config, places: _Places) -> None:
    """Checks that involve more than one key."""
    model = cfg.model
    if isinstance(model, TransformerConfig) and model.d_model % model.heads:
        raise ConfigError(
            f"model.d_model{places.where('model.d_model')}: {model.d_model} is not divisible by "
            f"model.heads = {model.heads}"
        )
    if model.share_embeddings and not cfg.tokenizer.joint:
        raise ConfigError(
            f"model.share_embeddings{places.where('model.share_embeddings')}: needs a joint tokenizer",
            "set tokenizer.joint: true, or model.share_embeddings: false",
        )
    if len(cfg.train.adam_betas) != 2 or not all(0 <= b < 1 for b in cfg.train.adam_betas):
        raise ConfigError(f"train.adam_betas{places.where('train.adam_betas')}: expected two numbers in [0, 1)")
    if cfg.train.average_last and not cfg.train.save_every:
        raise ConfigError(
            f"train.average_last{places.where('train.average_last')}: needs step checkpoints",
            "set train.save_every (e.g. to train.eval_every)",
        )
    if cfg.train.keep_last and cfg.train.average_last > cfg.train.keep_last:
        raise ConfigError(
            f"train.average_last{places.where('train.average_last')}: cannot exceed train.keep_last "
            f"({cfg.train.average_last} > {cfg.train.keep_last})"
        )
    if cfg.data.subword_alpha > 0 and cfg.tokenizer.type != "unigram":
        raise ConfigError(
            f"data.subword_alpha{places.where('data.subword_alpha')}: subword sampling needs tokenizer.type: unigram",
            "SentencePiece's BPE models have no n-best segmentations; set data.subword_alpha: 0 or use unigram",
        )
    if bool(cfg.data.dev_src) != bool(cfg.data.dev_tgt):
        raise ConfigError("data.dev_src and data.dev_tgt must be given together")
    _validate_data(cfg.data, places)


def _validate_data(data: DataConfig, places: _Places) -> None:
    """The corpora and dev sets: both forms not mixed, names unique, weights > 0, tags on all corpora or none."""
    for many, single in (("train", "train_src/train_tgt"), ("dev", "dev_src/dev_tgt")):
        if getattr(data, many) and any(getattr(data, key) for key in single.split("/")):
            raise ConfigError(
                f"data.{many}{places.where('data.' + many)}: give either data.{many} or data.{single}, not both"
            )
    entries: list[tuple[str, CorpusConfig | DevSetConfig]] = [
        *((f"data.train[{i}]", c) for i, c in enumerate(data.train)),
        *((f"data.dev[{i}]", d) for i, d in enumerate(data.dev)),
    ]
    seen: dict[str, str] = {}
    for key, entry in entries:
        where = places.where(key)
        if not _NAME_PATTERN.fullmatch(entry.name):
            raise ConfigError(
                f"{key}.name{where}: " + (f"{entry.name!r} is not a valid name" if entry.name else "required"),
                "a name is letters, digits, '_', '.' and '-', e.g. name: wesnoth",
            )
        kind = key.split("[")[0]
        if (kind, entry.name) in seen:
            raise ConfigError(f"{key}.name{where}: {entry.name!r} is also the name of {seen[(kind, entry.name)]}")
        seen[(kind, entry.name)] = key
        for side in ("src", "tgt"):
            if not getattr(entry, side):
                raise ConfigError(f"{key}.{side}{where}: required (the {entry.name!r} {side} file)")
        if isinstance(entry, CorpusConfig) and entry.weight <= 0:
            raise ConfigError(
                f"{key}.weight{places.where(key + '.weight')}: must be > 0, got {entry.weight}",
                "a corpus that should not be drawn from does not belong in data.train: remove it",
            )
        if entry.tgt_lang and not _NAME_PATTERN.fullmatch(entry.tgt_lang):
            raise ConfigError(f"{key}.tgt_lang{where}: {entry.tgt_lang!r} is not a language code (e.g. fr, pt_BR)")
    corpora = data.corpora()
    tagged = [c for c in corpora if c.tgt_lang]
    if tagged and len(tagged) != len(corpora):
        untagged = next(i for i, c in enumerate(corpora) if not c.tgt_lang)
        raise ConfigError(
            f"data.train[{untagged}].tgt_lang{places.where(f'data.train[{untagged}]')}: missing, while other corpora "
            "have one",
            "tag every corpus (a model with language tags needs one for every sentence) or none",
        )
    languages = data.languages()
    for i, dev in enumerate(data.dev_sets()):
        key = f"data.dev[{i}].tgt_lang" if data.dev else "data.dev_src"
        if languages and dev.tgt_lang not in languages:
            raise ConfigError(
                f"{key}{places.where(key)}: "
                + (f"{dev.tgt_lang!r} is not" if dev.tgt_lang else "a dev set of a model with language tags needs")
                + f" one of the training corpora's languages: {', '.join(languages)}",
                "give each dev set as data.dev: [{name, src, tgt, tgt_lang}]",
            )
        if not languages and dev.tgt_lang:
            raise ConfigError(
                f"{key}{places.where(key)}: a language tag on a dev set, but the training corpora have none",
                "set tgt_lang on every data.train corpus, or remove it from the dev set",
            )
    names = [d.name for d in data.dev_sets()]
    if data.select_on != "mean" and data.select_on not in names:
        raise ConfigError(
            f"data.select_on{places.where('data.select_on')}: {data.select_on!r} is not a dev set",
            f"choose mean or one of: {', '.join(names)}" if names else "it needs dev sets (data.dev)",
        )


# ---------------------------------------------------------------------------------------------------------------------
# Public API


def parse_overrides(assignments: list[str]) -> list[tuple[str, Any]]:
    """Parse `key.path=value` strings; values are YAML scalars/lists (`3`, `0.1`, `true`, `[0.9, 0.98]`)."""
    parsed = []
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. train.max_steps=2000")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc.__class__.__name__})") from None
        parsed.append((key.strip(), value))
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[str, Any]], places: _Places | None = None) -> None:
    """Set dotted keys in the raw mapping (creating sections as needed); validation happens afterwards."""
    for dotted, value in overrides:
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {dotted}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
        if places is not None:
            places.overrides.add(dotted)


def config_from_dict(raw: Any, source: str | None = None, text: str | None = None) -> Config:
    """Validate plain data (as from YAML) into a `Config`."""
    places = _Places(source, _line_map(text) if text else None)
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source or 'config'}: the top level must be a mapping of sections, got {type(raw).__name__}"
        )
    cfg = _build(Config, raw, "", places)
    _validate(cfg, places)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file (safe_load only), apply `--set` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" if not path.exists() else f"not a file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{at}: not valid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    places = _Places(str(path), _line_map(text))
    apply_overrides(raw, parse_overrides(overrides or []), places)
    cfg = _build(Config, raw, "", places)
    _validate(cfg, places)
    if not cfg.name:
        cfg.name = path.stem
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain data (every default filled in)."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)


def config_diff(old: Config, new: Config) -> list[str]:
    """Human-readable differences `key: old -> new` between two configs."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in dict.fromkeys([*a, *b]):
                walk(a.get(key), b.get(key), f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix.rstrip('.')}: {a!r} -> {b!r}")

    walk(config_to_dict(old), config_to_dict(new), "")
    return out


def iter_fields(cls: type = Config, prefix: str = "") -> typing.Iterator[tuple[str, Any, str]]:
    """Yield (dotted key, default, help) for every leaf key of the schema (both model kinds)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) in (Union, types.UnionType):
            for sub in typing.get_args(tp):
                yield from iter_fields(sub, f"{prefix}{f.name}[{sub.__name__}].")
        elif dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            yield f"{prefix}{f.name}", [], f.metadata.get("help", "")
            yield from iter_fields(typing.get_args(tp)[0], f"{prefix}{f.name}[].")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            yield f"{prefix}{f.name}", default, f.metadata.get("help", "")


@dataclass(frozen=True)
class ServeConfig:
    """`seqtool serve`'s settings (flags, not YAML): where it listens and what one request may ask for."""

    host: str = _opt("127.0.0.1", "address to listen on (loopback only unless told otherwise)")
    port: int = _opt(8080, "TCP port")
    max_batch_tokens: int = _opt(4000, "source-token budget per decoding batch (× beam), as translate's --batch-tokens")
    max_wait_ms: float = _opt(5.0, "how long an idle model waits for more requests before a partial batch runs")
    batching: Literal["rounds", "continuous"] = _opt(
        "rounds",
        "rounds: waiting lines are decoded together, batch after batch; continuous: lines join a running beam search"
        " between its steps (on a 2-core CPU measured slower: mixed lengths widen every row's cache)",
    )
    max_body_bytes: int = _opt(1_000_000, "largest request body")
    max_lines: int = _opt(256, "most lines (sentences) in one request")
    max_line_chars: int = _opt(2_000, "longest line, in characters")
    max_beam: int = _opt(16, "largest beam (and n-best) a request may ask for")
    workers: int = _opt(1, "server processes, each with its own copy of the models (uvicorn workers)")
    graceful_seconds: float = _opt(30.0, "on SIGTERM/SIGINT, how long in-flight requests may take to finish")
