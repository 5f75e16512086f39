"""The seqtool command line: parse flags, load config, call one library function, report errors in one line."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from seqtool import __version__
from seqtool.config import SAMPLE_SEED, SAMPLE_TEMPERATURE, SAMPLE_TOP_K, SAMPLE_TOP_P, ServeConfig
from seqtool.decode import DecodeOptions  # light: the heavy modules load inside the commands that need them
from seqtool.errors import DataError, SeqtoolError

if TYPE_CHECKING:
    from seqtool.decode import TranslatorLike
    from seqtool.decode.search import SearchConfig

_DECODE = DecodeOptions()  # the defaults of translate's engine options
_SERVE = ServeConfig()  # the defaults of serve's options

app = typer.Typer(
    name="seqtool",
    help="Neural machine translation from the command line: tokenizer, training, translation, evaluation.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
tokenizer_app = typer.Typer(help="Train and inspect SentencePiece tokenizers.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")


class ModelType(str, Enum):
    unigram = "unigram"
    bpe = "bpe"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class EncodingErrors(str, Enum):
    strict = "strict"
    replace = "replace"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"seqtool {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """seqtool: train and run translation models on your own machine."""


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def _read_input(path: Path | None) -> list[str]:
    """Lines of a file or of stdin; invalid UTF-8 is replaced by U+FFFD, with one warning naming the first line."""
    from seqtool.data.corpus import check_readable
    from seqtool.decode.translate import split_lines

    if path is not None and str(path) != "-":
        check_readable(path)
        try:
            data, source = path.read_bytes(), str(path)
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    else:
        data, source = (sys.stdin.buffer.read() if sys.stdin is not None else b""), "stdin"
    lines, bad_line = split_lines(data)
    if bad_line is not None:
        typer.echo(f"warning: invalid UTF-8 in {source} (first at line {bad_line}) was replaced by U+FFFD", err=True)
    return lines


def _refuse_existing(path: Path, overwrite: bool) -> None:
    """Never replace a user's file unless asked to with --overwrite."""
    if path.exists() and not overwrite:
        raise DataError(f"output file {path} exists", "pass --overwrite to replace it, or choose another -o")


def _write_output(lines: list[str], path: Path | None, overwrite: bool) -> None:
    """Write lines as UTF-8 to stdout, or atomically to a file (an existing file only with --overwrite).

    A reader that goes away early (`| head -1`) ends the command quietly with exit code 0.
    """
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if path is None or str(path) == "-":
        try:
            sys.stdout.flush()
            out, rest = sys.stdout.buffer, memoryview(data)
            while rest:  # a pipe write can be partial, and TextIOWrapper.write would silently drop the remainder
                rest = rest[out.write(rest) :]
            out.flush()
        except BrokenPipeError:
            # Send what is still buffered to /dev/null, so that the interpreter's final flush of stdout
            # cannot fail too (it would print "Exception ignored ... BrokenPipeError").
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0) from None
        return
    from seqtool.atomic import atomic_write_bytes

    _refuse_existing(path, overwrite)
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------------------------------------
# tokenizer


@tokenizer_app.command("train")
def tokenizer_train(
    inputs: Annotated[list[Path], typer.Option("--input", "-i", help="Text file(s), one sentence per line.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output prefix: writes PREFIX.model and .vocab.")],
    vocab_size: Annotated[int, typer.Option(help="Number of pieces, special symbols included.", min=8)] = 8000,
    model_type: Annotated[ModelType, typer.Option("--type", help="SentencePiece algorithm.")] = ModelType.unigram,
    character_coverage: Annotated[float, typer.Option(help="Share of characters to cover.", min=0.5, max=1.0)] = 1.0,
    separate: Annotated[
        bool, typer.Option("--separate", help="One model per input file (PREFIX.<ext>.model) instead of a joint one.")
    ] = False,
    input_sentence_size: Annotated[int, typer.Option(help="Sentences sampled for training.", min=1)] = 2_000_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    tgt_langs: Annotated[
        str, typer.Option(help="Target languages of a multilingual model, comma-separated: adds their tags (<2fr>).")
    ] = "",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing model files.")] = False,
) -> None:
    """Train a SentencePiece tokenizer (joint over all inputs, or --separate per input).

    Example: seqtool tokenizer train -i data/train.en -i data/train.de --vocab-size 8000 -o spm
    """
    from seqtool.tokenizer import TokenizerSpec, language_tag, train_tokenizers

    tags = tuple(language_tag(lang.strip()) for lang in tgt_langs.split(",") if lang.strip())
    spec = TokenizerSpec(vocab_size, model_type.value, character_coverage, input_sentence_size, seed, tags)
    for path in train_tokenizers(inputs, output, spec, separate, overwrite):
        typer.echo(f"wrote {path} and {path.with_suffix('.vocab')}", err=True)


@tokenizer_app.command("encode")
def tokenizer_encode(
    model: Annotated[Path, typer.Option("--model", "-m", help="SentencePiece .model file.")],
    input: Annotated[Path | None, typer.Option("--input", "-i", help="Input file (default: stdin).")] = None,
    ids: Annotated[bool, typer.Option("--ids", help="Print piece ids instead of pieces.")] = False,
) -> None:
    """Split text into pieces (or ids), one line per input line.

    Example: echo "Hello world" | seqtool tokenizer encode -m runs/demo/spm.model
    """
    from seqtool.tokenizer import SentencePieceModel

    sp = SentencePieceModel(model)
    lines = _read_input(input)
    rows = sp.encode(lines) if ids else sp.encode_pieces(lines)
    _write_output([" ".join(map(str, row)) for row in rows], None, False)


@tokenizer_app.command("decode")
def tokenizer_decode(
    model: Annotated[Path, typer.Option("--model", "-m", help="SentencePiece .model file.")],
    input: Annotated[Path | None, typer.Option("--input", "-i", help="Input file (default: stdin).")] = None,
    ids: Annotated[bool, typer.Option("--ids", help="The input holds piece ids instead of pieces.")] = False,
) -> None:
    """Join pieces (or ids) back into text, one line per input line.

    Example: echo "▁Hello ▁world" | seqtool tokenizer decode -m runs/demo/spm.model
    """
    from seqtool.tokenizer import SentencePieceModel

    sp = SentencePieceModel(model)
    lines = _read_input(input)
    if ids:
        try:
            rows = [[int(tok) for tok in line.split()] for line in lines]
        except ValueError:
            raise DataError("--ids expects whitespace-separated integers on every line") from None
        texts = sp.decode(rows)
    else:
        texts = sp.decode_pieces([line.split() for line in lines])
    _write_output(texts, None, False)


# ---------------------------------------------------------------------------------------------------------------------
# train


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config file (or, with --resume, a run directory).")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: --set train.max_steps=2000 (repeatable).")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Run directory (default: runs/NAME).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in the run directory exactly.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start over in a run directory that holds a run.")
    ] = False,
    init_from: Annotated[
        Path | None, typer.Option("--init-from", help="Start a new run from this checkpoint's weights.")
    ] = None,
    device: Annotated[Device | None, typer.Option(help="Override train.device.")] = None,
    encoding_errors: Annotated[
        EncodingErrors | None,
        typer.Option(help="Invalid UTF-8 in the corpus: strict (an error naming file:line) or replace (U+FFFD)."),
    ] = None,
    probe: Annotated[
        bool,
        typer.Option(
            "--probe",
            help="Time a 1024² matmul in the training precision before and after, and report the run's matmul "
            "GFLOP/s as a fraction of it (a few seconds).",
        ),
    ] = False,
) -> None:
    """Train a model from a YAML config; writes config, tokenizer, checkpoints and metrics into the run directory.

    Example: seqtool train recipes/wesnoth-en-de/transformer.yaml --set train.max_steps=2000 --run-dir runs/wes
    """
    from seqtool.progress import RichReporter
    from seqtool.rundir import training_config
    from seqtool.train.trainer import train as run_training

    sets = list(overrides or [])
    if device is not None:
        sets.append(f"train.device={device.value}")
    if encoding_errors is not None:
        sets.append(f"data.encoding_errors={encoding_errors.value}")
    cfg, target = training_config(config, sets, run_dir, resume, init_from)
    result = run_training(
        cfg, target, resume=resume, overwrite=overwrite, init_from=init_from, reporter=RichReporter(), probe=probe
    )
    if result.stop_reason == "interrupted":
        raise typer.Exit(130)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary line for the job
        best = f", best dev BLEU {result.best_bleu:.2f}" if result.best_bleu is not None else ""
        speed = f", {result.gflops:,.0f} GFLOP/s in matmuls" if result.gflops is not None else ""
        fraction = result.of_probe()
        if fraction is not None:
            speed += f" ({fraction:.0%} of the probe's {result.probe_gflops:,.0f})"
        typer.echo(f"done: {result.steps} steps{best}{speed}; run directory {result.run_dir}", err=True)


@app.command()
def prepare(
    config: Annotated[Path, typer.Argument(help="YAML config file (the one you will train with).")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: --set data.workers=8 (repeatable).")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Run directory the cache goes into (default: runs/NAME; see data.cache_dir).")
    ] = None,
) -> None:
    """Check the data, train the tokenizer if the config names one that does not exist, and build the encoded
    corpus cache ahead of training (e.g. before a multi-node run); `seqtool train` then reuses it.

    Example: seqtool prepare recipes/l10n-en-de/transformer.yaml --set tokenizer.model=data/l10n-en-de/spm.model
    --set data.cache_dir=/data/cache (then train with the same --set flags)
    """
    from seqtool.config import load_config
    from seqtool.progress import RichReporter
    from seqtool.rundir import default_run_dir
    from seqtool.train.setup import batch_shares
    from seqtool.train.setup import prepare as prepare_data

    cfg = load_config(config, list(overrides or []))
    reporter = RichReporter()
    corpora = prepare_data(cfg, default_run_dir(cfg, run_dir), reporter.message)
    for corpus, share in zip(corpora, batch_shares(corpora), strict=True):
        name = f"{corpus.name}: " if len(corpora) > 1 else ""
        share_text = f" ({share:.0%} of the batches)" if len(corpora) > 1 else ""
        typer.echo(
            f"ready: {name}{len(corpus.corpus):,} training pairs{share_text} encoded in {corpus.corpus.directory}",
            err=True,
        )


@app.command()
def average(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with step_N.pt checkpoints (train.save_every).")],
    last: Annotated[int, typer.Option(help="Average the newest N step checkpoints.", min=2)] = 5,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output file (default: RUN_DIR/checkpoints/averaged.pt).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
) -> None:
    """Average the parameters of the last N step checkpoints (translate it with --checkpoint averaged).

    Example: seqtool average runs/wes --last 5 && seqtool translate runs/wes --checkpoint averaged < test.en
    """
    from seqtool.rundir import average_run

    result = average_run(run_dir, last, output, overwrite)
    typer.echo(f"averaged {', '.join(p.name for p in result.inputs)} into {result.output}", err=True)


# ---------------------------------------------------------------------------------------------------------------------
# translate


class Engine(str, Enum):
    torch = "torch"
    ctranslate2 = "ctranslate2"


class StopRule(str, Enum):
    heuristic = "heuristic"
    exact = "exact"


class Batching(str, Enum):
    rounds = "rounds"
    continuous = "continuous"


class Quantize(str, Enum):
    auto = "auto"
    none = "none"
    int8 = "int8"


# the options the decoding commands (translate, score, serve) share
RunDirs = Annotated[
    list[Path],
    typer.Argument(
        help="Run directory written by `seqtool train`; several make an ensemble (same vocabularies).",
        metavar="RUN_DIR...",
    ),
]
CheckpointOption = Annotated[str, typer.Option(help="best, last, averaged, step_N or a checkpoint file.")]
DeviceOption = Annotated[Device, typer.Option(help="Where to run.")]
PrecisionOption = Annotated[
    Precision,
    typer.Option(
        help="fp32, or bf16 (a CPU with AVX-512 bf16/AMX, or a GPU): a Transformer's weights in bf16, an RNN under "
        "autocast."
    ),
]
Ct2ModelOption = Annotated[
    Path | None, typer.Option("--ct2-model", help="CTranslate2 model directory (default: RUN_DIR/ctranslate2).")
]
WeightsOption = Annotated[
    str | None,
    typer.Option(help="Ensemble: each run's weight, e.g. 0.6,0.4 (default: equal); log-probs are averaged."),
]
TgtLangOption = Annotated[
    str,
    typer.Option(
        "--tgt-lang",
        help="Target language of a multilingual model (one its corpora were tagged with: see seqtool info).",
    ),
]


@app.command()
def translate(
    run_dirs: RunDirs,
    input: Annotated[Path | None, typer.Option("--input", "-i", help="Input file (default: stdin).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: stdout).")] = None,
    beam: Annotated[
        int | None, typer.Option(help="Beam size; 1 = greedy (default: the config's decode.beam).", min=1)
    ] = None,
    length_penalty: Annotated[
        float | None,
        typer.Option(
            help="Length penalty alpha; 0 = none. Beam search ranks by log_prob / ((5 + n) / 6) ** alpha (GNMT), "
            "n = output tokens with </s> (--engine ctranslate2: it searches with n ** alpha, then ranks by GNMT).",
            min=0.0,
        ),
    ] = None,
    max_len_a: Annotated[float | None, typer.Option(help="Max output length = a * source length + b.", min=0.0)] = None,
    max_len_b: Annotated[int | None, typer.Option(help="Max output length = a * source length + b.", min=0)] = None,
    stop: Annotated[
        StopRule | None,
        typer.Option(
            help="When beam search stops a sentence: heuristic (its best live beam, ended now, scores below its worst "
            "finished one) or exact (no longer output could do better; slower). Default: the config's decode.stop."
        ),
    ] = None,
    batch_tokens: Annotated[
        int | None,
        typer.Option(help="Token budget per batch (source tokens × beam); each worker searches its own.", min=1),
    ] = None,
    max_input_len: Annotated[
        int | None,
        typer.Option(help="Source pieces per line; longer lines are truncated (default: decode.max_input_len).", min=1),
    ] = None,
    checkpoint: CheckpointOption = _DECODE.checkpoint,
    device: DeviceOption = Device(_DECODE.device),
    precision: PrecisionOption = Precision(_DECODE.precision),
    threads: Annotated[int, typer.Option(help="CPU threads in all (0 = one per core).", min=0)] = _DECODE.threads,
    workers: Annotated[
        int,
        typer.Option(
            help="Batches translated at once, sharing the threads (0 = one per thread on a CPU, 1 on a GPU; "
            "--stream: 1).",
            min=0,
        ),
    ] = _DECODE.workers,
    engine: Annotated[
        Engine,
        typer.Option(help="torch (seqtool's own search), or ctranslate2 (a model written by `seqtool export`)."),
    ] = Engine(_DECODE.engine),
    ct2_model: Ct2ModelOption = _DECODE.ct2_model,
    quantize: Annotated[
        Quantize,
        typer.Option(
            help="int8: int8 Linear layers, inputs quantized per token (torch engine, CPU only); none: fp32 weights; "
            "auto: int8 for a Transformer on an AVX-512 CPU without --precision bf16, else none."
        ),
    ] = Quantize(_DECODE.quantize),
    nbest: Annotated[
        int,
        typer.Option(help="Print the K best translations per line as `LINE<TAB>TEXT<TAB>SCORE` (K <= beam).", min=1),
    ] = 1,
    scores: Annotated[
        bool, typer.Option("--scores", help="Append <TAB> and the log-probability of the translation.")
    ] = False,
    stream: Annotated[
        bool,
        typer.Option("--stream", help="Answer each stdin line as soon as it arrives (interactive; slower in bulk)."),
    ] = False,
    sample: Annotated[
        bool,
        typer.Option(
            "--sample",
            help="Sample translations instead of searching (back-translation); with --nbest N, N independent samples. "
            "The same --seed gives the same samples, whatever the batching.",
        ),
    ] = False,
    top_k: Annotated[
        int, typer.Option(help="--sample: only from the K likeliest tokens (0 = all).", min=0)
    ] = SAMPLE_TOP_K,
    top_p: Annotated[
        float,
        typer.Option(help="--sample: only from the likeliest tokens whose probability reaches P.", min=0.0, max=1.0),
    ] = SAMPLE_TOP_P,
    temperature: Annotated[
        float, typer.Option(help="--sample: divide the logits by T (0 = the likeliest token).", min=0.0)
    ] = SAMPLE_TEMPERATURE,
    seed: Annotated[int, typer.Option(help="--sample: seed (with each line's number) of the draws.")] = SAMPLE_SEED,
    prefix: Annotated[
        bool,
        typer.Option(
            "--prefix",
            help="Input lines are SOURCE<TAB>PREFIX: each translation starts with PREFIX, the rest is searched.",
        ),
    ] = False,
    align: Annotated[
        bool,
        typer.Option(
            "--align",
            help="Append <TAB> and the word alignment (Pharaoh `src-tgt` pairs, from the cross-attention).",
        ),
    ] = False,
    weights: WeightsOption = None,
    tgt_lang: TgtLangOption = "",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
) -> None:
    """Translate text line by line: stdin to stdout (or -i/-o); one output line per input line, in order.

    --engine ctranslate2 runs a model written by `seqtool export` (needs pip install 'seqtool\\[ct2]').

    Example: seqtool translate runs/demo --beam 5 < data/test.en > hyp.de

    Example (back-translation): seqtool translate runs/de-en --sample --top-k 10 --seed 1 < mono.de > synthetic.en

    Example (ensemble): seqtool translate runs/a runs/b --weights 0.6,0.4 < test.en > hyp.de

    Example (target prefix): printf 'Open the file\\tÖffnen\\n' | seqtool translate runs/demo --prefix

    Example (multilingual model): seqtool translate runs/en-de-fr --tgt-lang fr < test.en > hyp.fr
    """
    from seqtool.decode import load_translator
    from seqtool.decode.search import SearchConfig
    from seqtool.decode.translate import format_translations, split_pairs, truncation_warning

    if output is not None:
        _refuse_existing(output, overwrite)  # before the model is loaded: fail fast
    if align and engine == Engine.ctranslate2:  # before the model is loaded
        raise DataError("--align needs --engine torch", "seqtool's engine aligns from the model's cross-attention")
    if stream and (input is not None or output is not None):
        raise DataError("--stream reads stdin and writes stdout", "drop -i/-o, or drop --stream for files")
    # --stream: one line at a time, all threads go to it
    options = _decode_options(
        engine, checkpoint, device, precision, threads, quantize, ct2_model, 1 if stream else workers
    )
    translator = load_translator(run_dirs, options, _parse_weights(weights))
    for warning in translator.warnings:
        typer.echo(f"warning: {warning}", err=True)
    dc = translator.config.decode
    search_cfg = SearchConfig.from_decode(
        dc,
        beam=beam,
        nbest=nbest,
        length_penalty=length_penalty,
        max_len_a=max_len_a,
        max_len_b=max_len_b,
        stop=None if stop is None else stop.value,
        sample=sample,
        top_k=top_k,
        top_p=top_p,
        temperature=temperature,
        seed=seed,
        tgt_lang=tgt_lang,
    )
    if not sample and nbest > (beam or dc.beam):
        typer.echo(f"note: --nbest {nbest} needs a beam of at least {nbest}: using --beam {nbest}", err=True)
    limit = max_input_len or dc.max_input_len
    if stream:
        _translate_stream(translator, search_cfg, limit, nbest, scores, prefix, align)
        return
    lines, prefixes = _read_input(input), None
    if prefix:
        lines, prefixes = split_pairs(lines)
    results = translator.translate(lines, search_cfg, batch_tokens, limit, prefixes=prefixes, align=align)
    warning = truncation_warning(results, limit)
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    _write_output(format_translations(results, nbest, scores), output, overwrite)


class Normalize(str, Enum):
    none = "none"
    avg = "avg"
    gnmt = "gnmt"


@app.command()
def score(
    run_dirs: RunDirs,
    src: Annotated[Path | None, typer.Option("--src", help="Source file (with --tgt; default: stdin).")] = None,
    tgt: Annotated[Path | None, typer.Option("--tgt", help="Target file, line-aligned with --src.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: stdout).")] = None,
    normalize: Annotated[
        Normalize,
        typer.Option(
            help="SCORE = LOG_PROB / lp(TOKENS): gnmt ((5 + n) / 6) ** alpha, as beam search ranks; avg n ** alpha "
            "(alpha 1: per token); none: LOG_PROB."
        ),
    ] = Normalize.gnmt,
    length_penalty: Annotated[
        float | None, typer.Option(help="alpha of --normalize (default: the config's decode.length_penalty).", min=0.0)
    ] = None,
    max_len: Annotated[
        int | None,
        typer.Option(
            help="Pieces per side; longer pairs are marked, not scored (default: decode.max_input_len).", min=1
        ),
    ] = None,
    batch_tokens: Annotated[int | None, typer.Option(help="Token budget per batch.", min=1)] = None,
    checkpoint: CheckpointOption = _DECODE.checkpoint,
    device: DeviceOption = Device(_DECODE.device),
    precision: PrecisionOption = Precision(_DECODE.precision),
    threads: Annotated[int, typer.Option(help="CPU threads (0 = one per core).", min=0)] = _DECODE.threads,
    engine: Annotated[
        Engine, typer.Option(help="torch, or ctranslate2 (a model written by `seqtool export`).")
    ] = Engine(_DECODE.engine),
    ct2_model: Ct2ModelOption = _DECODE.ct2_model,
    weights: WeightsOption = None,
    tgt_lang: TgtLangOption = "",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
) -> None:
    """Score given sentence pairs under a model: one line per pair, `LOG_PROB<TAB>SCORE<TAB>TOKENS`.

    LOG_PROB is the model's log-probability of the target's pieces and </s> (the units of `translate --scores`),
    TOKENS counts them. Pairs come from --src/--tgt, or from stdin as `SOURCE<TAB>TARGET` lines. A pair that cannot be
    scored (an empty side, a side over --max-len) prints `NA<TAB>NA<TAB>0<TAB>REASON`, so lines never shift.

    Example: seqtool score runs/demo --src test.en --tgt test.de --normalize avg > scores.tsv
    """
    from seqtool.decode import load_translator
    from seqtool.decode.scoring import format_scores
    from seqtool.decode.translate import split_pairs

    if output is not None:
        _refuse_existing(output, overwrite)
    if (src is None) != (tgt is None):
        raise DataError("--src and --tgt go together", "give both files, or SOURCE<TAB>TARGET lines on stdin")
    if src is not None and tgt is not None:
        sources, targets = _read_input(src), _read_input(tgt)
        if len(sources) != len(targets):
            raise DataError(f"{src} has {len(sources)} lines but {tgt} has {len(targets)}", "the files must be aligned")
    else:
        sources, targets = split_pairs(_read_input(None))
    quantize = Quantize.none if engine == Engine.torch else Quantize(_DECODE.quantize)  # the model's own numbers
    options = _decode_options(engine, checkpoint, device, precision, threads, quantize, ct2_model)
    translator = load_translator(run_dirs, options, _parse_weights(weights))
    for warning in translator.warnings:
        typer.echo(f"warning: {warning}", err=True)
    scores = translator.score(sources, targets, normalize.value, length_penalty, batch_tokens, max_len, tgt_lang)
    skipped = sum(s.error is not None for s in scores)
    if skipped:
        typer.echo(f"warning: {skipped} of {len(scores)} pairs were not scored (marked NA)", err=True)
    _write_output(format_scores(scores), output, overwrite)


def _decode_options(
    engine: Engine,
    checkpoint: str,
    device: Device,
    precision: Precision,
    threads: int,
    quantize: Quantize,
    ct2_model: Path | None,
    workers: int = 0,
) -> DecodeOptions:
    """The engine options of translate, score and serve."""
    return DecodeOptions(
        engine=engine.value,
        checkpoint=checkpoint,
        device=device.value,
        precision=precision.value,
        threads=threads,
        workers=workers,
        quantize=quantize.value,
        ct2_model=ct2_model,
    )


def _parse_weights(text: str | None) -> list[float] | None:
    """`--weights 0.6,0.4` -> [0.6, 0.4]."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise DataError(f"--weights {text!r} is not a list of numbers", "write it as --weights 0.6,0.4") from None


def _translate_stream(
    translator: TranslatorLike, cfg: SearchConfig, limit: int, nbest: int, scores: bool, prefix: bool, align: bool
) -> None:
    """Translate stdin line by line, writing and flushing each answer before reading the next line."""
    from seqtool.decode.translate import format_translations, split_lines, split_pairs

    for number, raw in enumerate(iter(sys.stdin.buffer.readline, b""), start=1):
        lines, bad = split_lines(raw)
        if bad is not None:
            typer.echo(f"warning: invalid UTF-8 in stdin line {number} was replaced by U+FFFD", err=True)
        lines, prefixes = (split_pairs(lines[:1] or [""])) if prefix else (lines[:1] or [""], None)
        results = translator.translate(
            lines, cfg, max_input_len=limit, first_line=number - 1, prefixes=prefixes, align=align
        )
        if results[0][0].truncated:
            typer.echo(f"warning: input line {number} was longer than {limit} pieces and was truncated", err=True)
        out = format_translations(results, nbest, scores, first_line=number)
        _write_output(out, None, False)


# ---------------------------------------------------------------------------------------------------------------------
# serve


@app.command()
def serve(
    run_dirs: Annotated[
        list[str], typer.Argument(help="Run directories to serve, as RUN_DIR or NAME=RUN_DIR (name used in requests).")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = _SERVE.host,
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = _SERVE.port,
    engine: Annotated[
        Engine, typer.Option(help="torch, or ctranslate2 (a model written by `seqtool export`).")
    ] = Engine(_DECODE.engine),
    ct2_model: Ct2ModelOption = _DECODE.ct2_model,
    quantize: Annotated[
        Quantize, typer.Option(help="As translate's --quantize (auto: int8 for a Transformer on an AVX-512 CPU).")
    ] = Quantize(_DECODE.quantize),
    precision: PrecisionOption = Precision(_DECODE.precision),
    checkpoint: CheckpointOption = _DECODE.checkpoint,
    device: DeviceOption = Device(_DECODE.device),
    threads: Annotated[
        int, typer.Option(help="CPU threads in all (0 = one per core, shared out among --workers).", min=0)
    ] = _DECODE.threads,
    workers: Annotated[
        int, typer.Option(help="Server processes, each loading the models (uvicorn workers).", min=1)
    ] = _SERVE.workers,
    max_batch_tokens: Annotated[
        int, typer.Option(help="Source-token budget per decoding batch (× beam), as translate's --batch-tokens.", min=1)
    ] = _SERVE.max_batch_tokens,
    max_wait_ms: Annotated[
        float, typer.Option(help="How long an idle model waits for more requests before it decodes.", min=0.0)
    ] = _SERVE.max_wait_ms,
    batching: Annotated[
        Batching,
        typer.Option(
            help="rounds: waiting requests decoded together, batch after batch; continuous: lines join a running "
            "beam search between its steps (slower on a small CPU; for GPUs)."
        ),
    ] = Batching(_SERVE.batching),
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.", min=1)] = _SERVE.max_body_bytes,
    max_lines: Annotated[int, typer.Option(help="Most lines in one request.", min=1)] = _SERVE.max_lines,
    max_line_chars: Annotated[int, typer.Option(help="Longest line, in characters.", min=1)] = _SERVE.max_line_chars,
    max_beam: Annotated[
        int, typer.Option(help="Largest beam or n-best a request may ask for.", min=1)
    ] = _SERVE.max_beam,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="Require the API key held by this environment variable on every request but /health."),
    ] = None,
) -> None:
    """Serve trained models over HTTP: a JSON API, OpenNMT-py's REST format, and a web page to try them.

    Endpoints: POST /v1/translate, POST /translator/translate (OpenNMT-py), GET /v1/models, GET /health, GET /.
    Concurrent requests are decoded together (dynamic batching).
    SIGTERM or Ctrl-C: stop accepting, finish the requests in flight, exit 0. Needs pip install 'seqtool\\[serve]'.

    Example: seqtool serve runs/demo --port 8080, then curl -s localhost:8080/v1/translate -d '{"text": ["Hello"]}'
    """
    from seqtool.serve.registry import ServeSpec
    from seqtool.serve.server import serve as run_server

    limits = ServeConfig(
        host=host,
        port=port,
        max_batch_tokens=max_batch_tokens,
        max_wait_ms=max_wait_ms,
        batching=batching.value,
        max_body_bytes=max_body_bytes,
        max_lines=max_lines,
        max_line_chars=max_line_chars,
        max_beam=max_beam,
        workers=workers,
    )
    options = _decode_options(engine, checkpoint, device, precision, threads, quantize, ct2_model)
    spec = ServeSpec.build(run_dirs, options, limits, api_key_env)
    run_server(spec, log=lambda message: typer.echo(message, err=True))


# ---------------------------------------------------------------------------------------------------------------------
# export


class ExportFormat(str, Enum):
    ctranslate2 = "ctranslate2"


class CT2Quantization(str, Enum):
    int8 = "int8"
    int8_float32 = "int8_float32"
    float32 = "float32"
    bfloat16 = "bfloat16"


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `seqtool train` (a Transformer).")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="Target engine.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Model directory to write (default: RUN_DIR/ctranslate2)."),
    ] = None,
    quantization: Annotated[
        CT2Quantization,
        typer.Option(help="Weight type: float32 (exact), int8 / int8_float32 (int8 weights, ~4x smaller), bfloat16."),
    ] = CT2Quantization.float32,
    checkpoint: Annotated[str, typer.Option(help="best, last, averaged, step_N or a checkpoint file.")] = "best",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing model directory.")] = False,
) -> None:
    """Export a trained Transformer for another inference engine (CTranslate2), for `translate --engine ctranslate2`.

    Needs CTranslate2: pip install 'seqtool\\[ct2]'. The directory is written atomically (a temporary directory
    next to it, then renamed).

    Example: seqtool export runs/demo --format ctranslate2 --quantization int8 -o runs/demo/ctranslate2
    """
    from seqtool.export import export_run

    target = output or run_dir / "ctranslate2"
    result = export_run(run_dir, fmt.value, target, quantization.value, checkpoint, overwrite)
    typer.echo(
        f"wrote {result.output} ({fmt.value}, {result.quantization}, {result.bytes / 1e6:.1f} MB) "
        f"from {result.checkpoint}",
        err=True,
    )


# ---------------------------------------------------------------------------------------------------------------------
# eval


@app.command("eval")
def evaluate(
    hyp: Annotated[
        list[Path], typer.Option("--hyp", help="Hypotheses (detokenised), one per line; repeat to compare systems.")
    ],
    ref: Annotated[Path, typer.Option("--ref", help="References, line-aligned with --hyp.")],
    metrics: Annotated[str, typer.Option(help="Comma-separated: bleu, chrf, ter.")] = "bleu,chrf,ter",
    bootstrap: Annotated[
        int, typer.Option(help="Paired bootstrap resamples when comparing systems (sacrebleu's test).", min=10)
    ] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Score hypotheses against references with sacrebleu (BLEU, chrF, TER) and print the signatures.

    With several --hyp files: one table, and paired bootstrap resampling of each system against the first
    (p-values, 95 % confidence intervals; * marks p < 0.05).

    Example: seqtool eval --hyp hyp.de --ref data/test.de

    Example: seqtool eval --hyp baseline.de --hyp new.de --ref data/test.de
    """
    from seqtool.evaluate import evaluate_files

    result = evaluate_files(hyp, ref, metrics, bootstrap)
    typer.echo(result.to_json() if as_json else result.to_text())


# ---------------------------------------------------------------------------------------------------------------------
# inspection: info, plot, attention


@app.command()
def info(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `seqtool train`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show what a run holds: architecture, parameters, vocabulary, steps, best dev BLEU, config vs defaults.

    Example: seqtool info runs/demo
    """
    from seqtool.run_info import format_info, info_json, run_info

    summary = run_info(run_dir)
    typer.echo(info_json(summary) if as_json else format_info(summary))


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories (one line each per panel).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Picture file: .png, .svg or .pdf.")] = Path(
        "curves.png"
    ),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
) -> None:
    """Plot learning curves (training loss, dev loss, dev BLEU, learning rate against the update) from metrics.jsonl.

    Needs matplotlib: pip install 'seqtool\\[plot]'.

    Example: seqtool plot runs/gru runs/transformer -o curves.png
    """
    from seqtool.plot import plot_curves

    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise DataError(f"run directory not found: {run_dir}")
    _refuse_existing(output, overwrite)
    plot_curves(run_dirs, output)
    typer.echo(f"wrote {output}", err=True)


@app.command()
def attention(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `seqtool train`.")],
    sentence: Annotated[str, typer.Argument(help="A source sentence (in quotes).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Picture file: .png, .svg or .pdf.")] = Path(
        "attention.png"
    ),
    layer: Annotated[int, typer.Option(help="Transformer decoder layer (negative counts from the last).")] = -1,
    head: Annotated[
        int | None, typer.Option(help="Transformer attention head (default: the average over heads).", min=0)
    ] = None,
    beam: Annotated[int | None, typer.Option(help="Beam size (default: the config's decode.beam).", min=1)] = None,
    checkpoint: CheckpointOption = _DECODE.checkpoint,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
) -> None:
    """Translate one sentence and draw its cross-attention as a heatmap (source pieces across, output pieces down).

    Needs matplotlib: pip install 'seqtool\\[plot]'.

    Example: seqtool attention runs/demo "Save the file before closing." -o attn.png
    """
    from seqtool.decode.attention_map import run_attention_map
    from seqtool.plot import _pyplot, plot_attention

    _pyplot()  # fail before loading the model when matplotlib is missing
    _refuse_existing(output, overwrite)
    amap = run_attention_map(run_dir, sentence, beam=beam, checkpoint=checkpoint, layer=layer, head=head)
    plot_attention(amap.weights, amap.src_pieces, amap.tgt_pieces, output, amap.title)
    typer.echo(amap.translation)
    typer.echo(f"wrote {output}", err=True)


# ---------------------------------------------------------------------------------------------------------------------
# entry point


def _fail(message: str, hint: str | None, code: int) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main() -> None:
    """Console-script entry point: runs the app; SeqtoolError -> 'error: ...' on stderr with its exit code."""
    debug = "--debug" in sys.argv[1:]
    try:
        app()
    except SeqtoolError as exc:
        if debug:
            raise
        _fail(exc.message, exc.hint, exc.exit_code)
    except KeyboardInterrupt:
        if debug:
            raise
        _fail("interrupted", None, 130)
