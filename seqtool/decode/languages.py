"""Target-language tags of multilingual models: which tag a request asks for, and where it goes.

A run whose corpora set `tgt_lang` was trained with the tag `<2LANG>` on every pair. With `data.tag_side: source`
(the default) the tag is a piece of the source tokenizer in front of every source sentence; translating puts the
asked language's tag in the same place (`encode_sources`). With `data.tag_side: target` it is a piece of the target
tokenizer and the first target token (after <s>): translating forces it as a one-token prefix and takes it off the
output; the scores are the model's for the whole output, the tag included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from seqtool.decode.search import Hypothesis
from seqtool.errors import ConfigError
from seqtool.tokenizer import Tokenizer


@dataclass(frozen=True)
class LanguageTag:
    """The tag id of one target language and its place: `src` in front of the source, or `tgt` as the first target
    token (at most one of them set; neither for a model without tags)."""

    src: int | None = None
    tgt: int | None = None

    def prefixes(self, prefix_ids: Sequence[Sequence[int]] | None, lines: int) -> list[list[int]] | None:
        """Each line's forced target ids: its prefix (if any) behind the target tag (if any)."""
        if self.tgt is None:
            return None if prefix_ids is None else [list(p) for p in prefix_ids]
        return [[self.tgt, *p] for p in (prefix_ids if prefix_ids is not None else [[]] * lines)]

    def targets(self, tgt_ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """Target ids as the model was trained on them: behind the target tag (when it has one); empty stays empty."""
        if self.tgt is None:
            return [list(t) for t in tgt_ids]
        return [[self.tgt, *t] if t else [] for t in tgt_ids]

    def strip(self, hyps: list[list[Hypothesis]]) -> list[list[Hypothesis]]:
        """The hypotheses without their leading target tag (scores unchanged: the model's, tag included)."""
        if self.tgt is None:
            return hyps
        return [[_without_tag(h, self.tgt) for h in nbest] for nbest in hyps]


def _without_tag(hyp: Hypothesis, tag: int) -> Hypothesis:
    return Hypothesis(hyp.tokens[1:], hyp.score, hyp.log_prob) if hyp.tokens[:1] == [tag] else hyp


def requested_tag(tokenizer: Tokenizer, tgt_lang: str, languages: Sequence[str], side: str = "source") -> LanguageTag:
    """The tag asking for `tgt_lang` ("" = none) on `side` ("source" or "target", the run's data.tag_side), or a
    ConfigError (exit code 2) when a model with tags is asked for no language or an unknown one, or a model without
    tags for one."""
    if not languages:
        if tgt_lang:
            raise ConfigError(
                f"target language {tgt_lang!r} asked for, but this model was trained without language tags",
                "translate without --tgt-lang (the model has one target language)",
            )
        return LanguageTag()
    if not tgt_lang:
        raise ConfigError(
            f"this model translates into several languages ({', '.join(languages)}): choose one",
            f'pass --tgt-lang {languages[0]} (in a request: "tgt_lang": "{languages[0]}")',
        )
    if tgt_lang not in languages:
        raise ConfigError(
            f"this model does not translate into {tgt_lang!r}", f"its target languages are: {', '.join(languages)}"
        )
    return corpus_tag(tokenizer, tgt_lang, side)


def corpus_tag(tokenizer: Tokenizer, tgt_lang: str, side: str) -> LanguageTag:
    """The tag of `tgt_lang` ("" = none) on `side` ("source" or "target"); a DataError when the side's tokenizer
    lacks the piece."""
    if not tgt_lang:
        return LanguageTag()
    if side == "target":
        return LanguageTag(tgt=tokenizer.tgt.tag_id(tgt_lang))
    return LanguageTag(src=tokenizer.src.tag_id(tgt_lang))
