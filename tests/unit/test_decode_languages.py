"""decode.languages: which tag a translation asks for, on which side, and the errors for a missing, unknown or
unwanted language."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqtool.decode.languages import LanguageTag, requested_tag
from seqtool.decode.search import Hypothesis
from seqtool.decode.translate import encode_sources
from seqtool.errors import ConfigError
from seqtool.tokenizer import Tokenizer, TokenizerSpec, train_sentencepiece


@pytest.fixture(scope="module")
def tokenizer(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    spec = TokenizerSpec(vocab_size=300, user_symbols=("<2de>", "<2fr>"))
    return Tokenizer.load(train_sentencepiece([tiny_corpus["train.en"]], tmp_path_factory.mktemp("spm") / "m", spec))


def test_the_tag_of_the_asked_language_on_its_side(tokenizer: Tokenizer) -> None:
    tag = requested_tag(tokenizer, "de", ["de", "fr"])
    assert tag.tgt is None and tokenizer.src.processor.id_to_piece(tag.src) == "<2de>"
    tag = requested_tag(tokenizer, "fr", ["de", "fr"], "target")
    assert tag.src is None and tokenizer.tgt.processor.id_to_piece(tag.tgt) == "<2fr>"
    assert requested_tag(tokenizer, "", []) == LanguageTag()


def test_a_target_tag_is_forced_scored_and_taken_off() -> None:
    """The target-side tag goes in front of every forced prefix (or is the whole prefix) and of every scored
    target, and comes off the hypotheses with their scores unchanged; without a target tag all stays as it was."""
    tag = LanguageTag(tgt=5)
    assert tag.prefixes(None, 2) == [[5], [5]] and tag.prefixes([[9, 8], []], 2) == [[5, 9, 8], [5]]
    assert tag.targets([[9, 8], []]) == [[5, 9, 8], []]  # an empty target stays empty (marked, not scored)
    hyps = [[Hypothesis([5, 9, 8], -1.5, -2.0), Hypothesis([5], -0.5, -0.5)], []]
    assert tag.strip(hyps) == [[Hypothesis([9, 8], -1.5, -2.0), Hypothesis([], -0.5, -0.5)], []]
    none = LanguageTag(src=4)
    assert none.prefixes(None, 2) is None and none.prefixes([[9]], 1) == [[9]] and none.targets([[9]]) == [[9]]
    assert none.strip(hyps) == hyps


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
        requested_tag(tokenizer, tgt_lang, languages)
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
