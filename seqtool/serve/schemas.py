"""Request and response bodies of the server's JSON API, validated strictly (a wrong type is a 422, never coerced)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TranslateRequest(_Strict):
    """`POST /v1/translate`: lines to translate with one model; unset options take the run's decode defaults."""

    model: StrictStr | None = Field(None, description="model name (optional when the server has one model)")
    text: list[StrictStr] = Field(..., description="lines to translate; one translation per line, in order")
    beam: StrictInt | None = Field(None, ge=1, description="beam size; 1 = greedy")
    nbest: StrictInt = Field(1, ge=1, description="hypotheses per line (beam widened to it when smaller)")
    length_penalty: StrictFloat | StrictInt | None = Field(None, ge=0, description="GNMT alpha; 0 = none")
    max_len_a: StrictFloat | StrictInt | None = Field(None, ge=0, description="max output = a * source length + b")
    max_len_b: StrictInt | None = Field(None, ge=0, description="max output = a * source length + b")
    scores: StrictBool = Field(False, description="add each translation's log-probability and ranking score")
    tgt_lang: StrictStr | None = Field(None, description="target language of a multilingual model (see /v1/models)")


class Hypothesis(BaseModel):
    """One translation of a line."""

    text: str
    log_prob: float | None = None
    score: float | None = None


class LineResult(Hypothesis):
    """A line's best translation; with nbest > 1 also the whole n-best list, best first."""

    truncated: bool = False
    nbest: list[Hypothesis] | None = None


class TranslateResponse(BaseModel):
    """The answer to `POST /v1/translate`."""

    model: str
    translations: list[LineResult]


class OpenNMTRequestItem(_Strict):
    """One item of OpenNMT-py's REST format: `{"src": "...", "id": 100}`."""

    src: StrictStr
    id: StrictInt | StrictStr | None = None


class ErrorBody(BaseModel):
    """Every error answer: what went wrong, and what to do about it."""

    error: str
    hint: str | None = None
