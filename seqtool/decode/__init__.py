"""Decoding: THE entry point for everything that translates with a trained run (translate, serve, attention).

    translator = load_translator("runs/demo", DecodeOptions(device="cpu", threads=4))  # engine, device, int8, ...
    for warning in translator.warnings: ...                                              # e.g. bf16 -> fp32
    search_cfg = SearchConfig.from_decode(translator.config.decode, beam=4)             # the run's decode defaults
    results = translator.translate(lines, search_cfg)                                   # n-best lists, in order

Both engines, seqtool's own (`translate.Translator`, torch) and CTranslate2's (`ct2_engine.CTranslate2Translator`, a
model written by `seqtool export`), implement `TranslatorLike`. Every choice about how to run a model is made here:
which engine and checkpoint, the device, bf16 (with a fallback to fp32 where the device lacks it), int8 weights,
threads and parallel workers; and every option conflict is a SeqtoolError raised here, before a model is loaded.

This module imports nothing heavy (torch, CTranslate2) at import time: the command line reads `DecodeOptions` for
its flag defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from seqtool.errors import ConfigError, SeqtoolError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from seqtool.config import Config
    from seqtool.decode.ct2_engine import CTranslate2Translator
    from seqtool.decode.languages import LanguageTag
    from seqtool.decode.scoring import PairScore
    from seqtool.decode.search import SearchConfig
    from seqtool.decode.translate import Translation, TranslationStream, Translator
    from seqtool.tokenizer import Tokenizer

__all__ = [
    "ENGINES",
    "PRECISIONS",
    "QUANTIZE_CHOICES",
    "DecodeOptions",
    "TranslatorLike",
    "load_translator",
]

ENGINES = ("torch", "ctranslate2")
PRECISIONS = ("fp32", "bf16")
QUANTIZE_CHOICES = ("auto", "none", "int8")  # auto: see quantize.resolve_quantize


@dataclass(frozen=True)
class DecodeOptions:
    """How to run a trained model (not what to search for: that is `SearchConfig`). The defaults live here only."""

    engine: str = "torch"  # "torch" (seqtool's own search) or "ctranslate2" (a model written by `seqtool export`)
    checkpoint: str = "best"  # best, last, averaged, step_N or a checkpoint file (torch engine)
    device: str = "auto"  # auto, cpu, cuda, mps (ctranslate2: auto, cpu, cuda)
    precision: str = "fp32"  # fp32, or bf16 (torch engine: a Transformer's weights in bf16, an RNN under autocast; fp32
    # with a warning where bf16 is unsupported)
    threads: int = 0  # CPU threads in all; 0 = torch's default (one per core)
    workers: int = 0  # batches translated at once, sharing the threads; 0 = chosen per search (decode_parallelism)
    quantize: str = "auto"  # auto, none, int8 (torch engine; see quantize.resolve_quantize)
    ct2_model: Path | None = None  # CTranslate2 model directory; None = RUN_DIR/ctranslate2


@runtime_checkable
class TranslatorLike(Protocol):
    """What every engine offers: text lines in, n-best lists of `Translation` out (one list per line, in order)."""

    engine: str  # "torch" or "ctranslate2"
    config: Config  # the run's config: callers take the decode defaults from `config.decode`
    tokenizer: Tokenizer  # the run's source and target SentencePiece models
    warnings: list[str]  # what loading changed from what was asked (e.g. bf16 -> fp32); the caller shows them
    languages: list[str]  # a multilingual model's target languages (SearchConfig.tgt_lang picks one); else empty

    def translate(
        self,
        lines: Sequence[str],
        cfg: SearchConfig,
        batch_tokens: int | None = None,
        max_input_len: int | None = None,
        first_line: int = 0,
        prefixes: Sequence[str] | None = None,
        align: bool = False,
    ) -> list[list[Translation]]:
        """Translate `lines` (batch_tokens None: the config's decode.batch_tokens; max_input_len None: no limit;
        line i is line `first_line + i` of the input, which seeds its samples when `cfg.sample`; its translations
        start with the target text `prefixes[i]` when given; `align`: with word alignments, where the engine can)."""
        ...

    def parallelism(self, cfg: SearchConfig) -> tuple[int, int]:
        """(workers, threads per worker) that `translate` uses for a search with `cfg`."""
        ...

    def language_tag(self, tgt_lang: str) -> LanguageTag:
        """The tag asking for `tgt_lang` ("": none) and its side; a ConfigError when the model has no such language,
        or needs one (see `decode.languages.requested_tag`)."""
        ...

    def score(
        self,
        sources: Sequence[str],
        targets: Sequence[str],
        normalize: str = "gnmt",
        alpha: float | None = None,
        batch_tokens: int | None = None,
        max_len: int | None = None,
        tgt_lang: str = "",
    ) -> list[PairScore]:
        """The model's score of each (source, target) pair, in order (see `seqtool.decode.scoring`)."""
        ...

    def stream(self, cfg: SearchConfig, max_input_len: int | None = None) -> TranslationStream | None:
        """A search with `cfg` that lines may join while it runs (continuous batching), or None where the engine or
        the search has none (then a server decodes in rounds of `translate`)."""
        ...


def load_translator(
    run_dir: str | Path | Sequence[str | Path],
    options: DecodeOptions | None = None,
    weights: Sequence[float] | None = None,
) -> TranslatorLike:
    """The translator of the run in `run_dir`, run as `options` say (default: `DecodeOptions()`).

    Several run directories make an ensemble (seqtool's engine only; see `seqtool.decode.ensemble`), their
    log-probabilities averaged with `weights` (default: equal). Raises a SeqtoolError (exit code 2) for options that
    do not go together, before any model is loaded, and the loading errors of the run (not a run directory, no
    checkpoint, no CTranslate2 export, runs of different vocabularies in an ensemble, ...).
    """
    options = options or DecodeOptions()
    if not isinstance(run_dir, (str, Path)):
        runs = [Path(d) for d in run_dir]
        if len(runs) > 1 or weights is not None:
            return _load_ensemble(runs, options, weights)
        run_dir = runs[0]
    _check_choice("engine", options.engine, ENGINES)
    _check_choice("precision", options.precision, PRECISIONS)
    _check_choice("quantize", options.quantize, QUANTIZE_CHOICES)
    if options.threads < 0 or options.workers < 0:
        raise ConfigError(f"threads and workers must be >= 0, got {options.threads} and {options.workers}")
    if options.engine == "ctranslate2":
        return _load_ct2(Path(run_dir), options)
    return _load_torch(Path(run_dir), options)


def _load_ensemble(runs: list[Path], options: DecodeOptions, weights: Sequence[float] | None) -> Translator:
    """An ensemble of the runs' models (see `seqtool.decode.ensemble`), with the first run's tokenizer and config."""
    from seqtool.decode.ensemble import Ensemble
    from seqtool.decode.translate import Translator

    if options.engine != "torch":
        raise SeqtoolError(
            f"an ensemble runs on --engine torch, not {options.engine}", "drop --engine, or translate with one run"
        )
    if weights is not None and len(weights) != len(runs):
        raise ConfigError(f"{len(weights)} weights for {len(runs)} runs", "give one weight per run: --weights 0.5,0.5")
    members = [_load_torch(run, options) for run in runs]
    first = members[0]
    for run, member in zip(runs[1:], members[1:], strict=True):
        for side in ("src", "tgt"):
            if _pieces(getattr(member.tokenizer, side)) != _pieces(getattr(first.tokenizer, side)):
                name = "source" if side == "src" else "target"
                raise ConfigError(
                    f"{run} has another {name} vocabulary than {runs[0]}",
                    "an ensemble's runs must share their SentencePiece vocabularies (train them with one tokenizer)",
                )
    model = Ensemble([member.model for member in members], weights)
    warnings = list(dict.fromkeys(w for member in members for w in member.warnings))
    return Translator(
        model,
        first.tokenizer,
        first.device,
        first.precision,
        config=first.config,
        threads=options.threads,
        workers=options.workers,
        warnings=warnings,
    )


def _pieces(model: object) -> list[str]:
    """The pieces of a SentencePiece model, in id order (and its padding id)."""
    processor = model.processor  # type: ignore[attr-defined]
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())] + [str(model.pad_id)]  # type: ignore[attr-defined]


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}", f"choose one of {', '.join(choices)}")


def _load_ct2(run_dir: Path, options: DecodeOptions) -> CTranslate2Translator:
    """The CTranslate2 engine: the export's device and threads; the options of the torch engine are refused."""
    from seqtool.decode.ct2_engine import load_ct2_translator, resolve_ct2_device

    defaults = DecodeOptions()
    for given, flag in (
        (options.quantize != defaults.quantize, "--quantize"),
        (options.precision != defaults.precision, "--precision"),
    ):
        if given:
            raise SeqtoolError(
                f"{flag} applies to --engine torch", "a CTranslate2 model computes in its export's --quantization"
            )
    if options.checkpoint != defaults.checkpoint:
        raise SeqtoolError(
            "--checkpoint applies to --engine torch",
            "export the checkpoint you want: seqtool export RUN_DIR --format ctranslate2 --checkpoint NAME",
        )
    device = resolve_ct2_device(options.device)
    return load_ct2_translator(run_dir, options.ct2_model, device, options.threads, options.workers)


def _load_torch(run_dir: Path, options: DecodeOptions) -> Translator:
    """seqtool's own engine: the run's model on its device, in bf16 or int8 as the options say."""
    import torch

    from seqtool.decode.quantize import quantize_model, resolve_quantize
    from seqtool.decode.translate import Translator
    from seqtool.rundir import load_for_inference
    from seqtool.runtime import bf16_supported, limit_onednn_cache, resolve_device, set_threads

    if options.ct2_model is not None:
        raise SeqtoolError("--ct2-model needs --engine ctranslate2")
    precision = options.precision
    if options.quantize == "int8":  # asked for: the device must be the CPU (quantize_model says so if not)
        if precision != "fp32":
            raise SeqtoolError(f"--quantize int8 and --precision {precision} exclude each other")
        device = torch.device("cpu" if options.device == "auto" else options.device)
    else:
        device = resolve_device(options.device)
    set_threads(options.threads)  # for loading; `translate` then shares the threads out among its workers
    limit_onednn_cache()
    cpu = torch.device("cpu")
    model, tokenizer, cfg, _ = load_for_inference(
        run_dir, options.checkpoint, cpu if options.quantize == "int8" else device
    )
    # as asked: --precision bf16 means no int8 with --quantize auto, even where bf16 then falls back to fp32
    scheme = resolve_quantize(options.quantize, device, precision, cfg.model.kind)
    warnings = []
    if precision == "bf16" and not bf16_supported(device):
        warnings.append(f"bf16 is not supported on this {device.type} device: translating in fp32")
        precision = "fp32"
    if scheme != "none":
        model = quantize_model(model, scheme, device)
    elif precision == "bf16" and cfg.model.kind == "transformer":
        # bf16 weights rather than autocast, which casts every weight at every step: on an AMX Xeon beam 5 ran 1.3x
        # autocast's speed and 1.4-1.6x int8's offline, at the same BLEU (tests/benchmarks/README.md, serving)
        model = model.to(torch.bfloat16)
    return Translator(
        model,
        tokenizer,
        device,
        precision,
        config=cfg,
        threads=options.threads,
        workers=options.workers,
        warnings=warnings,
    )
