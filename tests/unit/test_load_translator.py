"""`seqtool.decode.load_translator`: both engines behind one protocol, every option conflict, the bf16 fallback;
`SearchConfig.from_decode`; and the defaults that now come from config.py only."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch

from seqtool.config import Config, DecodeConfig, RNNConfig, TransformerConfig
from seqtool.decode import DecodeOptions, TranslatorLike, load_translator, quantize
from seqtool.decode.quantize import Int8Linear
from seqtool.decode.search import SearchConfig
from seqtool.decode.translate import Translator
from seqtool.errors import ConfigError, SeqtoolError
from seqtool.rundir import RunDir, load_for_inference, read_run_config
from tests.cli.helpers import write_config

LINES = ["Open the file", "", "Save all documents", "Close the window"]
ONE_THREAD = DecodeOptions(threads=1)


@pytest.fixture(scope="module")
def run_dir(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Transformer trained for 30 steps through the real `seqtool train` (one thread)."""
    root = tmp_path_factory.mktemp("load-translator")
    write_config(root / "tiny.yaml", tiny_corpus, "transformer", vocab_size=200, max_steps=30, eval_every=30)
    result = subprocess.run(
        [sys.executable, "-m", "seqtool", "train", str(root / "tiny.yaml"), "--run-dir", str(root / "run")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return root / "run"


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    """`translate` sets torch's (process-wide) thread count: put it back for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def search(translator: TranslatorLike, **overrides: object) -> SearchConfig:
    return SearchConfig.from_decode(translator.config.decode, **overrides)


# ---------------------------------------------------------------------------------------------------------------------
# torch engine


def test_torch_fp32(run_dir: Path) -> None:
    translator = load_translator(run_dir, DecodeOptions(threads=1, quantize="none"))
    assert isinstance(translator, Translator) and isinstance(translator, TranslatorLike)
    assert translator.engine == "torch" and translator.warnings == []
    assert translator.device == torch.device("cpu") and translator.precision == "fp32"
    assert not any(isinstance(m, Int8Linear) for m in translator.model.modules())
    assert translator.config == read_run_config(RunDir(run_dir))  # the run's config, decode defaults included
    assert translator.config.decode.max_len_b == 5  # (the test config's, not the schema's default 10)
    results = translator.translate(LINES, search(translator, beam=2, nbest=2))
    assert len(results) == len(LINES) and [t.text for t in results[1]] == [""]
    model, tokenizer, cfg, _ = load_for_inference(run_dir, "best", torch.device("cpu"))  # the same, by hand
    by_hand = Translator(model, tokenizer, torch.device("cpu"), config=cfg).translate(
        LINES, search(translator, beam=2, nbest=2)
    )
    assert [[(t.text, t.log_prob) for t in n] for n in results] == [[(t.text, t.log_prob) for t in n] for n in by_hand]
    assert all(len(results[i]) == 2 for i in (0, 2, 3))


def test_torch_int8_is_auto_for_a_transformer_on_the_cpu(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = load_translator(run_dir, ONE_THREAD)  # int8 only where the CPU makes it pay (AVX-512)
    assert any(isinstance(m, Int8Linear) for m in default.model.modules()) == quantize.int8_pays()
    monkeypatch.setattr(quantize, "int8_pays", lambda: True)
    auto = load_translator(run_dir, ONE_THREAD)
    assert isinstance(auto, Translator) and auto.precision == "fp32" and auto.warnings == []
    assert any(isinstance(m, Int8Linear) for m in auto.model.modules())
    assert not any(type(m) is torch.nn.Linear for m in auto.model.modules())
    fp32 = load_translator(run_dir, DecodeOptions(threads=1, quantize="none"))
    greedy = search(auto, beam=1)
    int8_out = [r[0].text for r in auto.translate(LINES, greedy)]
    fp32_out = [r[0].text for r in fp32.translate(LINES, greedy)]
    assert int8_out[1] == "" and sum(a == b for a, b in zip(int8_out, fp32_out, strict=True)) >= 3


def test_torch_workers_are_chosen_per_search(run_dir: Path) -> None:
    """threads=2, workers=0: greedy search runs one batch on both threads; beam search two batches on one each."""
    translator = load_translator(run_dir, DecodeOptions(threads=2))
    greedy, beam = search(translator, beam=1), search(translator, beam=3)
    assert translator.parallelism(greedy) == (1, 2)
    assert translator.parallelism(beam) == (2, 1)
    translator.translate(LINES, beam)
    assert torch.get_num_threads() == 1
    translator.translate(LINES, greedy)
    assert torch.get_num_threads() == 2  # the translator kept the total, not what the last search left
    fixed = load_translator(run_dir, DecodeOptions(threads=2, workers=1))
    assert fixed.parallelism(beam) == (1, 2)


def test_batch_tokens_default_is_the_run_config(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import seqtool.decode.translate as translate_module

    seen: list[int] = []
    real = translate_module.translate_ids

    def spy(model, src_ids, cfg, batch_tokens, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(batch_tokens)
        return real(model, src_ids, cfg, batch_tokens, *args, **kwargs)

    monkeypatch.setattr(translate_module, "translate_ids", spy)
    translator = load_translator(run_dir, DecodeOptions(threads=1, quantize="none"))
    translator.config.decode.batch_tokens = 123
    translator.translate(LINES, search(translator, beam=1))
    translator.translate(LINES, search(translator, beam=1), 77)
    assert seen == [123, 77]


# ---------------------------------------------------------------------------------------------------------------------
# bf16: a fallback to fp32 with one warning where the device has no bf16 (e.g. an AVX2-only CPU)


def test_bf16_falls_back_to_fp32_with_a_warning(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import seqtool.runtime

    monkeypatch.setattr(seqtool.runtime, "bf16_supported", lambda device: False)
    translator = load_translator(run_dir, DecodeOptions(threads=1, precision="bf16"))
    assert isinstance(translator, Translator)
    assert translator.precision == "fp32"
    assert translator.warnings == ["bf16 is not supported on this cpu device: translating in fp32"]
    # --quantize auto follows what was asked (bf16: no int8), not the fallback
    assert not any(isinstance(m, Int8Linear) for m in translator.model.modules())
    assert translator.translate(["Open the file"], search(translator, beam=1))[0][0].log_prob < 0


def test_bf16_is_kept_where_supported(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import seqtool.runtime

    monkeypatch.setattr(seqtool.runtime, "bf16_supported", lambda device: True)
    translator = load_translator(run_dir, DecodeOptions(threads=1, precision="bf16"))
    assert isinstance(translator, Translator) and translator.precision == "bf16" and translator.warnings == []
    # a Transformer's weights are bf16 (autocast on top would only cast them again at every step)
    assert {p.dtype for p in translator.model.parameters()} == {torch.bfloat16}
    assert translator.autocast_precision == "fp32"
    fp32 = load_translator(run_dir, DecodeOptions(threads=1, quantize="none"))
    lines = [line for line in LINES if line]
    outputs = [nbest[0].text for nbest in fp32.translate(lines, search(fp32, beam=2))]
    # the same outputs, scored by both: bf16 log-probs within 2 % of fp32's (bf16 keeps 8 bits of mantissa)
    for ours, theirs in zip(translator.score(lines, outputs), fp32.score(lines, outputs), strict=True):
        assert ours.error is None and ours.tokens == theirs.tokens
        assert abs(ours.log_prob - theirs.log_prob) <= 0.02 * abs(theirs.log_prob) + 0.05, (ours, theirs)


def test_the_cli_prints_the_fallback_warning(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import seqtool.runtime
    from seqtool.cli import app

    monkeypatch.setattr(seqtool.runtime, "bf16_supported", lambda device: False)
    args = ["translate", str(run_dir), "--precision", "bf16", "--threads", "1", "--beam", "1"]
    result = CliRunner().invoke(app, args, input="Open the file\n\n")
    assert result.exit_code == 0, result.exception
    assert result.stderr == "warning: bf16 is not supported on this cpu device: translating in fp32\n"
    assert len(result.stdout.split("\n")) == 3


# ---------------------------------------------------------------------------------------------------------------------
# option conflicts: raised before anything is loaded (the run directory does not even exist)


@pytest.mark.parametrize(
    ("options", "message", "hint"),
    [
        (
            DecodeOptions(engine="ctranslate2", quantize="int8"),
            "--quantize applies to --engine torch",
            "a CTranslate2 model computes in its export's --quantization",
        ),
        (
            DecodeOptions(engine="ctranslate2", quantize="none"),
            "--quantize applies to --engine torch",
            "a CTranslate2 model computes in its export's --quantization",
        ),
        (
            DecodeOptions(engine="ctranslate2", precision="bf16"),
            "--precision applies to --engine torch",
            "a CTranslate2 model computes in its export's --quantization",
        ),
        (
            DecodeOptions(engine="ctranslate2", checkpoint="last"),
            "--checkpoint applies to --engine torch",
            "export the checkpoint you want: seqtool export RUN_DIR --format ctranslate2 --checkpoint NAME",
        ),
        (DecodeOptions(ct2_model=Path("somewhere")), "--ct2-model needs --engine ctranslate2", None),
        (
            DecodeOptions(quantize="int8", precision="bf16"),
            "--quantize int8 and --precision bf16 exclude each other",
            None,
        ),
    ],
    ids=["ct2-quantize-int8", "ct2-quantize-none", "ct2-precision", "ct2-checkpoint", "ct2-model", "int8-bf16"],
)
def test_option_conflicts(tmp_path: Path, options: DecodeOptions, message: str, hint: str | None) -> None:
    with pytest.raises(SeqtoolError) as caught:
        load_translator(tmp_path / "no-run", options)
    assert caught.value.message == message and caught.value.hint == hint
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    "options",
    [DecodeOptions(engine="onnx"), DecodeOptions(precision="fp16"), DecodeOptions(quantize="int4")],
    ids=["engine", "precision", "quantize"],
)
def test_unknown_choices(tmp_path: Path, options: DecodeOptions) -> None:
    with pytest.raises(ConfigError, match="unknown"):
        load_translator(tmp_path / "no-run", options)


def test_int8_on_another_device_is_refused(run_dir: Path) -> None:
    with pytest.raises(SeqtoolError, match="CPU only"):
        load_translator(run_dir, DecodeOptions(quantize="int8", device="cuda"))


def test_loading_errors_of_the_run(tmp_path: Path) -> None:
    with pytest.raises(SeqtoolError, match="run directory not found"):
        load_translator(tmp_path / "no-run", ONE_THREAD)


# ---------------------------------------------------------------------------------------------------------------------
# ctranslate2 engine


@pytest.fixture(scope="module")
def ct2_export(run_dir: Path) -> Path:
    pytest.importorskip("ctranslate2")
    from seqtool.export import export_run

    target = run_dir / "ctranslate2"
    export_run(run_dir, "ctranslate2", target, "float32")
    return target


def test_ctranslate2(run_dir: Path, ct2_export: Path) -> None:
    from seqtool.decode.ct2_engine import CTranslate2Translator

    translator = load_translator(run_dir, DecodeOptions(engine="ctranslate2", threads=1))
    assert isinstance(translator, CTranslate2Translator) and isinstance(translator, TranslatorLike)
    assert translator.engine == "ctranslate2" and translator.warnings == []
    assert translator.config == read_run_config(RunDir(run_dir))
    greedy = search(translator, beam=1)
    assert translator.parallelism(greedy) == translator.parallelism(search(translator, beam=4)) == (1, 1)
    torch_fp32 = load_translator(run_dir, DecodeOptions(threads=1, quantize="none"))
    ours = torch_fp32.translate(LINES, greedy)
    theirs = translator.translate(LINES, greedy)
    assert [r[0].text for r in theirs] == [r[0].text for r in ours]  # greedy: the same outputs
    for a, b in zip(ours, theirs, strict=True):
        assert b[0].log_prob == pytest.approx(a[0].log_prob, rel=1e-3, abs=1e-3)
    explicit = load_translator(run_dir, DecodeOptions(engine="ctranslate2", threads=1, ct2_model=ct2_export))
    assert [r[0].text for r in explicit.translate(LINES, greedy)] == [r[0].text for r in theirs]


def test_ctranslate2_two_workers(run_dir: Path, ct2_export: Path) -> None:
    translator = load_translator(run_dir, DecodeOptions(engine="ctranslate2", threads=2, workers=2))
    assert translator.parallelism(search(translator, beam=1)) == (2, 1)


# ---------------------------------------------------------------------------------------------------------------------
# SearchConfig.from_decode


def test_from_decode_takes_the_decode_section() -> None:
    decode = DecodeConfig(beam=3, length_penalty=0.6, max_len_a=2.0, max_len_b=7, stop="exact")
    cfg = SearchConfig.from_decode(decode)
    assert cfg == SearchConfig(beam=3, nbest=1, length_penalty=0.6, max_len_a=2.0, max_len_b=7, stop="exact")


def test_from_decode_overrides_and_ignores_none() -> None:
    decode = DecodeConfig(beam=3, length_penalty=0.6, max_len_a=2.0, max_len_b=7)
    cfg = SearchConfig.from_decode(decode, beam=None, length_penalty=0.0, max_len_a=None, max_len_b=0, stop=None)
    assert (cfg.beam, cfg.length_penalty, cfg.max_len_a, cfg.max_len_b, cfg.stop) == (3, 0.0, 2.0, 0, "heuristic")
    assert SearchConfig.from_decode(decode, beam=1, nbest=1).beam == 1
    assert SearchConfig.from_decode(decode, length_penalty_kind="avg").length_penalty_kind == "avg"


def test_from_decode_widens_the_beam_to_the_nbest() -> None:
    decode = DecodeConfig(beam=3)
    assert (SearchConfig.from_decode(decode, nbest=5).beam, SearchConfig.from_decode(decode, nbest=5).nbest) == (5, 5)
    assert SearchConfig.from_decode(decode, beam=2, nbest=4).beam == 4
    assert SearchConfig.from_decode(decode, beam=6, nbest=4).beam == 6


def test_from_decode_refuses_an_unknown_field() -> None:
    with pytest.raises(TypeError, match="beem"):
        SearchConfig.from_decode(DecodeConfig(), beem=4)


# ---------------------------------------------------------------------------------------------------------------------
# defaults: config.py is their one source


def _signature_defaults(func: object) -> dict[str, object]:
    return {
        name: p.default
        for name, p in inspect.signature(func).parameters.items()  # type: ignore[arg-type]
        if p.default is not inspect.Parameter.empty
    }


def test_search_defaults_are_the_decode_section() -> None:
    decode = asdict(DecodeConfig())
    for f in fields(SearchConfig):
        if f.name in decode:
            assert f.default == decode[f.name], f.name
    assert SearchConfig.from_decode(DecodeConfig()) == SearchConfig()


def test_model_constructor_defaults_are_the_model_sections() -> None:
    from seqtool.models.rnn import RNNSeq2Seq
    from seqtool.models.transformer import Transformer

    for cls, section in ((Transformer, TransformerConfig()), (RNNSeq2Seq, RNNConfig())):
        defaults = _signature_defaults(cls)
        assert defaults, cls
        values = asdict(section)
        for name, value in defaults.items():
            assert value == values[name], (cls.__name__, name)


def test_tokenizer_spec_and_batch_tokens_defaults() -> None:
    from seqtool.decode.ct2_engine import CTranslate2Translator
    from seqtool.decode.translate import translate_ids
    from seqtool.tokenizer import TokenizerSpec

    config = Config()
    spec = TokenizerSpec()
    assert (spec.vocab_size, spec.model_type, spec.character_coverage, spec.input_sentence_size, spec.seed) == (
        config.tokenizer.vocab_size,
        config.tokenizer.type,
        config.tokenizer.character_coverage,
        config.tokenizer.input_sentence_size,
        config.seed,
    )
    assert _signature_defaults(translate_ids)["batch_tokens"] == config.decode.batch_tokens
    for cls in (Translator, CTranslate2Translator):  # None: the translator's config.decode.batch_tokens
        assert _signature_defaults(cls.translate)["batch_tokens"] is None


def test_cli_flag_defaults_are_the_library_defaults() -> None:
    """The CLI keeps its defaults visible in --help (without importing config.py); they must be the library's."""
    import typer.main

    from seqtool.cli import app
    from seqtool.tokenizer import TokenizerSpec

    command = typer.main.get_command(app)
    ctx = command.context_class(command)

    def defaults(*path: str) -> dict[str, object]:
        cmd = command
        for name in path:
            found = cmd.get_command(ctx, name)  # type: ignore[attr-defined]
            assert found is not None, name
            cmd = found
        return {p.name: p.default for p in cmd.params if p.name}

    translate = defaults("translate")
    for f in fields(DecodeOptions):
        assert translate[f.name] == getattr(DecodeOptions(), f.name), f.name
    assert translate["nbest"] == SearchConfig().nbest
    spec = TokenizerSpec()
    train = defaults("tokenizer", "train")
    assert (train["vocab_size"], train["model_type"], train["character_coverage"]) == (
        spec.vocab_size,
        spec.model_type,
        spec.character_coverage,
    )
    assert (train["input_sentence_size"], train["seed"]) == (spec.input_sentence_size, spec.seed)
    assert defaults("attention")["checkpoint"] == DecodeOptions().checkpoint
