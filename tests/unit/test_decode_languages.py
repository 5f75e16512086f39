"""decode.languages: which tag a translation asks for, and the errors for a missing, unknown or unwanted language."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqtool.decode.languages import language_tag_id
from seqtool.decode.translate import encode_sources
from seqtool.errors import ConfigError
from seqtool.tokenizer import Tokenizer, TokenizerSpec, train_sentencepiece


@pytest.fixture(scope="module")
def tokenizer(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    spec = TokenizerSpec(vocab_size=300, user_symbols=("<2de>", "<2fr>"))
    return Tokenizer.load(train_sentencepiece([tiny_corpus["train.en"]], tmp_path_factory.mktemp("spm") / "m", spec))


def test_the_tag_of_the_asked_language(tokenizer: Tokenizer) -> None:
    de = language_tag_id(tokenizer, "de", ["de", "fr"])
    assert tokenizer.src.processor.id_to_piece(de) == "<2de>"
    assert language_tag_id(tokenizer, "", []) is None


@pytest.mark.parametrize(
    ("tgt_lang", "languages", "message", "hint"),
    [
        ("", ["de", "fr"], "several languages (de, fr): choose one", "--tgt-lang de"),
        ("es", ["de", "fr"], "does not translate into 'es'", "de, fr"),
        ("de", [], "trained without language tags", "without --tgt-lang"),
    ],
)
def test_errors(tokenizer: Tokenizer, tgt_lang: str, languages: list[str], message: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        language_tag_id(tokenizer, tgt_lang, languages)
    assert message in err.value.message and hint in (err.value.hint or "")


def test_sources_get_the_tag_id_in_front_as_in_training(tokenizer: Tokenizer) -> None:
    """Training puts the tag id in front of the encoded source (make_batch's src_tag); so does translation. (Text
    with the tag in front would not do: SentencePiece adds a word-start piece before it.)"""
    de = tokenizer.src.tag_id("de")
    lines = ["Open the file", "", "Save all documents now"]
    plain = tokenizer.src.encode(lines)
    ids, cut = encode_sources(tokenizer, lines, None, de)
    assert ids == [[de, *plain[0]], [], [de, *plain[2]]] and cut == [False] * 3
    ids, cut = encode_sources(tokenizer, lines, 3, de)  # the limit counts the tag
    assert ids[2] == [de, *plain[2][:2]] and cut == [len(plain[0]) > 2, False, True]
