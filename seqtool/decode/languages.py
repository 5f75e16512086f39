"""Target-language tags of multilingual models: which tag a request asks for, checked against the run's languages.

A run whose corpora set `tgt_lang` was trained with the tag `<2LANG>` (a piece of the source tokenizer) in front of
every source sentence; translating with it puts the asked language's tag in the same place (`encode_sources`).
"""

from __future__ import annotations

from collections.abc import Sequence

from seqtool.errors import ConfigError
from seqtool.tokenizer import Tokenizer


def language_tag_id(tokenizer: Tokenizer, tgt_lang: str, languages: Sequence[str]) -> int | None:
    """The source tag id asking for `tgt_lang` ("" = none), or a ConfigError (exit code 2) when a model with tags
    is asked for no language or an unknown one, or a model without tags for one."""
    if not languages:
        if tgt_lang:
            raise ConfigError(
                f"target language {tgt_lang!r} asked for, but this model was trained without language tags",
                "translate without --tgt-lang (the model has one target language)",
            )
        return None
    if not tgt_lang:
        raise ConfigError(
            f"this model translates into several languages ({', '.join(languages)}): choose one",
            f'pass --tgt-lang {languages[0]} (in a request: "tgt_lang": "{languages[0]}")',
        )
    if tgt_lang not in languages:
        raise ConfigError(
            f"this model does not translate into {tgt_lang!r}", f"its target languages are: {', '.join(languages)}"
        )
    return tokenizer.src.tag_id(tgt_lang)
