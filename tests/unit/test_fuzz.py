"""Property-based tests of the input path: any bytes and any text give one output line per input line, never a crash."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqtool.config import TransformerConfig
from seqtool.data.corpus import read_lines
from seqtool.decode.search import SearchConfig
from seqtool.decode.translate import Translator, clean_line, split_lines
from seqtool.errors import DataError
from seqtool.models import build_model
from seqtool.tokenizer import Tokenizer, TokenizerSpec, train_sentencepiece

FUZZ = settings(max_examples=100, deadline=None)
BOM = b"\xef\xbb\xbf"

# bytes built from pieces that matter to line splitting and decoding, plus random bytes and valid text
BYTE_PIECES = st.one_of(
    st.sampled_from(
        [b"\n", b"\r\n", b"\r", BOM, b"\x00", b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xef\xbf\xbd"]
    ),
    st.binary(max_size=6),
    st.text(max_size=6).map(str.encode),
)
RAW_BYTES = st.lists(BYTE_PIECES, max_size=20).map(b"".join)
# any code points (lone surrogates and control characters included), with the awkward ones drawn more often
AWKWARD = ["\ud800", "\udc00", "\ud83d", "\ude00", "\x00", "\t", "\r", "\x1b", "\x85", "\u2028", "\ufeff", "\u0301"]
# (st.text would filter surrogates out of such an alphabet, so the characters are joined by hand)
ANY_TEXT = st.lists(st.one_of(st.characters(exclude_categories=()), st.sampled_from(AWKWARD)), max_size=30).map("".join)
SEARCH = SearchConfig(beam=2, max_len_a=0, max_len_b=3)


def line_count(data: bytes) -> int:
    """Lines in a byte string: one per LF, plus an unterminated last line (a leading BOM is not text)."""
    body = data.removeprefix(BOM)
    return body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)


def is_utf8(data: bytes) -> bool:
    """Whether the bytes are valid UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for the files the examples write (hypothesis cannot use function-scoped tmp_path)."""
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def translator(tiny_corpus: dict[str, Path], scratch: Path) -> Iterator[Translator]:
    """A randomly initialised tiny Transformer with a real SentencePiece model (200 pieces) trained on tiny data.

    Torch runs on one thread meanwhile: on a busy machine, tiny ops are far slower with a thread pool.
    """
    spec = TokenizerSpec(vocab_size=200)
    model_file = train_sentencepiece([tiny_corpus["train.en"], tiny_corpus["train.de"]], scratch / "spm", spec)
    tokenizer = Tokenizer.load(model_file)
    torch.manual_seed(0)
    config = TransformerConfig(d_model=16, heads=2, ffn_dim=32, encoder_layers=1, decoder_layers=1)
    model = build_model(config, tokenizer.src.vocab_size, tokenizer.tgt.vocab_size, tokenizer.specials)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Translator(model, tokenizer, torch.device("cpu"))
    torch.set_num_threads(threads)


@FUZZ
@given(data=RAW_BYTES)
def test_read_lines_strict_gives_lines_or_a_data_error(data: bytes, scratch: Path) -> None:
    path = scratch / "strict.txt"
    path.write_bytes(data)
    try:
        lines = read_lines(path)
    except DataError as exc:
        assert "invalid UTF-8" in exc.message and not is_utf8(data)
        return
    assert lines == split_lines(data)[0] and len(lines) == line_count(data)


@FUZZ
@given(data=RAW_BYTES)
def test_read_lines_replace_keeps_every_line(data: bytes, scratch: Path) -> None:
    path = scratch / "replace.txt"
    path.write_bytes(data)
    lines = read_lines(path, encoding_errors="replace")
    assert len(lines) == line_count(data)
    assert lines == split_lines(data)[0]


@FUZZ
@given(data=RAW_BYTES)
def test_split_lines_counts_lines_and_finds_invalid_utf8(data: bytes) -> None:
    lines, bad_line = split_lines(data)
    assert len(lines) == line_count(data)
    assert not any("\n" in line for line in lines)
    if is_utf8(data):
        assert bad_line is None
    else:
        assert bad_line is not None and 1 <= bad_line <= len(lines)
        assert "\ufffd" in lines[bad_line - 1]


def test_split_lines_examples() -> None:
    assert split_lines(b"") == ([], None)
    assert split_lines(b"\n") == ([""], None)
    assert split_lines(BOM + b"a\r\nb") == (["a", "b"], None)
    assert split_lines(b"a\rb\r\r\n") == (["a\rb\r"], None)
    assert split_lines(b"ok\nbad \xff\n") == (["ok", "bad \ufffd"], 2)
    assert split_lines("ok \ufffd\n".encode()) == (["ok \ufffd"], None)


@FUZZ
@given(text=ANY_TEXT)
def test_clean_line_leaves_only_text_sentencepiece_accepts(text: str) -> None:
    cleaned = clean_line(text)
    assert not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in cleaned)
    assert cleaned == cleaned.strip() and clean_line(cleaned) == cleaned
    cleaned.encode("utf-8")  # no unpaired surrogate left
    if not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text):
        assert cleaned == text.strip()


def test_clean_line_examples() -> None:
    for code in range(0x110000):
        if unicodedata.category(chr(code)) == "Cc":
            assert clean_line(f"a{chr(code)}b") == "a b", hex(code)
    assert clean_line("\ud83d\ude00 and \ud800 and \udfff") == "😀 and \ufffd and \ufffd"
    assert clean_line("\t\x00 e\u0301 \u200b\r") == "e\u0301 \u200b"


@FUZZ
@given(
    lines=st.lists(
        st.one_of(ANY_TEXT, st.sampled_from(["", " ", "\x00", "\t\r", "Open the file", " ".join(["file"] * 300)])),
        max_size=6,
    ),
    max_input_len=st.none() | st.integers(1, 6),
    batch_tokens=st.integers(1, 60),
)
def test_translate_gives_one_output_per_input_line(
    translator: Translator, lines: list[str], max_input_len: int | None, batch_tokens: int
) -> None:
    results = translator.translate(lines, SEARCH, batch_tokens, max_input_len)
    assert len(results) == len(lines)
    lengths = [len(ids) for ids in translator.tokenizer.src.encode(clean_line(line) for line in lines)]
    for nbest, length in zip(results, lengths, strict=True):
        assert len(nbest) == 1
        best = nbest[0]
        assert not any(unicodedata.category(ch) == "Cc" for ch in best.text)  # never a line break
        assert best.truncated == (max_input_len is not None and length > max_input_len)
        if length == 0:
            assert best.text == "" and best.log_prob == 0.0


def test_translations_never_hold_a_line_break(translator: Translator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A target tokenizer that decodes control characters (e.g. byte pieces <0x0A>) cannot split an output line."""
    monkeypatch.setattr(translator.tokenizer.tgt, "decode", lambda ids: ["a\nb\r\x00"] * len(ids))
    results = translator.translate(["Open the file", ""], SEARCH)
    assert [nbest[0].text for nbest in results] == ["a b", ""]
