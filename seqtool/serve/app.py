"""The ASGI app: routes, request validation, errors as JSON, API key, body-size limit, and the web page.

It only calls the decoding library: each model's `Batcher` (which calls `Translator.translate`) and the run's
info. Every error answer is `{"error": ..., "hint": ...}` with a 4xx status (a 500 only for a failure of the server
itself, never with a traceback).
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seqtool import __version__
from seqtool.config import ServeConfig
from seqtool.decode.search import SearchConfig
from seqtool.decode.translate import Translation
from seqtool.errors import SeqtoolError
from seqtool.serve.registry import ServedModel, ServeSpec, close_models, load_models
from seqtool.serve.schemas import (
    Hypothesis,
    LineResult,
    OpenNMTRequestItem,
    TranslateRequest,
    TranslateResponse,
)

OPEN_PATHS = ("/health", "/", "/favicon.ico")  # answered without the API key (the page asks for it)


class ApiError(Exception):
    """An error answered as JSON with `status`."""

    def __init__(self, status: int, error: str, hint: str | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.hint = status, error, hint


def _error(status: int, error: str, hint: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "hint": hint}, status_code=status, headers=headers)


class BodyLimit:
    """Refuse request bodies over `limit` bytes with a 413, by Content-Length or while reading (chunked bodies)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, f"the request body is larger than {self.limit:,} bytes", _LIMIT_HINT)
            return message

        await self.app(scope, limited, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error(413, f"the request body is larger than {self.limit:,} bytes", _LIMIT_HINT)
        await response(scope, receive, send)


_LIMIT_HINT = "send fewer lines per request, or start the server with a larger --max-body-bytes"


def create_app(spec: ServeSpec, models: dict[str, ServedModel] | None = None) -> ASGIApp:
    """The app serving `spec.models`; loaded here at start-up unless `models` are given (already loaded)."""
    state: dict[str, Any] = {"models": models or {}, "ready": models is not None}
    limits = spec.limits

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not state["ready"]:
            state["models"] = load_models(spec)  # in a worker process of `seqtool serve --workers N`
            state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            close_models(state["models"])

    app = FastAPI(title="seqtool", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def api_key(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if spec.api_key and request.url.path not in OPEN_PATHS and not _key_matches(request, spec.api_key):
            return _error(
                401,
                "missing or wrong API key",
                "send the key as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                {"WWW-Authenticate": "Bearer"},
            )
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.hint)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _first_problem(exc.errors()), "see GET /v1/models and the README's Serving section")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        hint = "the endpoints are POST /v1/translate, POST /translator/translate, GET /v1/models, GET /health, GET /"
        return _error(exc.status_code, str(exc.detail), hint if exc.status_code in (404, 405) else None)

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"the server failed: {type(exc).__name__}: {str(exc)[:200]}", "see the server's log")

    @app.get("/health")
    async def health() -> JSONResponse:
        if not state["ready"]:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "models": list(state["models"]), "pid": os.getpid()})

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "models": [
                {
                    **model.info,
                    "batches": model.batcher.rounds,
                    "sentences": model.batcher.sentences,
                    "most_lines_together": model.batcher.most_together,
                }
                for model in state["models"].values()
            ]
        }

    @app.post("/v1/translate", response_model=TranslateResponse, response_model_exclude_none=True)
    async def translate(request: Request) -> TranslateResponse:
        body = _validated(TranslateRequest, await _json(request))
        model = _model(state["models"], body.model)
        _check_lines(body.text, limits)
        search = _search(
            model, body.beam, body.nbest, body.length_penalty, body.max_len_a, body.max_len_b, limits, body.tgt_lang
        )
        results = await _translate(model, body.text, search)
        lines = [_line_result(nbest, body.nbest, body.scores) for nbest in results]
        return TranslateResponse(model=model.spec.name, translations=lines)

    @app.post("/translator/translate")
    async def opennmt_translate(request: Request) -> list[list[dict[str, Any]]]:
        payload = await _json(request)
        if not isinstance(payload, list):
            raise ApiError(422, "the OpenNMT-py format is a JSON list", 'send [{"src": "a sentence", "id": 0}, ...]')
        items = [_validated(OpenNMTRequestItem, item) for item in payload]
        ids = {item.id for item in items}
        if len(ids) > 1:
            raise ApiError(422, "all items of one request must name the same model id", "send one request per model")
        model = _opennmt_model(state["models"], ids.pop() if ids else None)
        sources = [item.src for item in items]
        _check_lines(sources, limits)
        results = await _translate(model, sources, _search(model, None, 1, None, None, None, limits))
        return [
            [
                {"src": src, "tgt": nbest[0].text, "n_best": 1, "pred_score": nbest[0].log_prob}
                for src, nbest in zip(sources, results, strict=True)
            ]
        ]

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_PAGE.read(), headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    return BodyLimit(app, limits.max_body_bytes)


class _Page:
    """The static page, read from the package once."""

    def __init__(self) -> None:
        self._html: str | None = None

    def read(self) -> str:
        if self._html is None:
            self._html = resources.files("seqtool.serve").joinpath("page.html").read_text(encoding="utf-8")
        return self._html


_PAGE = _Page()


def _key_matches(request: Request, key: str) -> bool:
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization") or ""
    if auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    return hmac.compare_digest(given.encode("utf-8"), key.encode("utf-8"))


async def _json(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise ApiError(400, "the request body is empty", 'send a JSON body, e.g. {"text": ["Hello"]}')
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte {exc.start})", "send UTF-8 JSON") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", "check the body with a JSON linter"
        ) from None


def _validated(schema: Any, payload: Any) -> Any:
    try:
        return schema.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(422, _first_problem(exc.errors()), "see the README's Serving section for the fields") from None


def _first_problem(errors: Any) -> str:
    first = next(iter(errors), {"loc": (), "msg": "invalid request"})
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    count = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where or 'body'}: {first.get('msg', 'invalid')}{count}"


def _model(models: dict[str, ServedModel], name: str | None) -> ServedModel:
    if name is None:
        if len(models) == 1:
            return next(iter(models.values()))
        raise ApiError(422, "this server has several models: name one", f'set "model" to one of {", ".join(models)}')
    if name not in models:
        raise ApiError(404, f"unknown model {name!r}", f"this server has: {', '.join(models)}")
    return models[name]


def _opennmt_model(models: dict[str, ServedModel], model_id: int | str | None) -> ServedModel:
    """OpenNMT-py clients send a model id: with one model any id selects it; else the position (0-based) or name."""
    if len(models) == 1 or model_id is None:
        return _model(models, None)
    if isinstance(model_id, int):
        names = list(models)
        if 0 <= model_id < len(names):
            return models[names[model_id]]
        raise ApiError(404, f"unknown model id {model_id}", f"ids are 0..{len(names) - 1}: {', '.join(names)}")
    return _model(models, model_id)


def _check_lines(lines: list[str], limits: ServeConfig) -> None:
    if not lines:
        raise ApiError(422, "nothing to translate: the list of lines is empty", "send at least one line")
    if len(lines) > limits.max_lines:
        raise ApiError(413, f"{len(lines)} lines in one request; at most {limits.max_lines}", "split the request")
    for number, line in enumerate(lines, start=1):
        if len(line) > limits.max_line_chars:
            raise ApiError(
                413,
                f"line {number} has {len(line):,} characters; at most {limits.max_line_chars:,}",
                "split long texts into sentences",
            )


def _search(
    model: ServedModel,
    beam: int | None,
    nbest: int,
    length_penalty: float | None,
    max_len_a: float | None,
    max_len_b: int | None,
    limits: ServeConfig,
    tgt_lang: str | None = None,
) -> SearchConfig:
    for name, value in (("beam", beam), ("nbest", nbest)):
        if value is not None and value > limits.max_beam:
            raise ApiError(422, f"{name} {value} is larger than this server allows ({limits.max_beam})")
    try:
        model.translator.language_tag(tgt_lang or "")  # a model with tags needs one of its languages, others none
    except SeqtoolError as exc:
        raise ApiError(422, exc.message, exc.hint) from None
    return SearchConfig.from_decode(
        model.translator.config.decode,
        beam=beam,
        nbest=nbest,
        length_penalty=None if length_penalty is None else float(length_penalty),
        max_len_a=None if max_len_a is None else float(max_len_a),
        max_len_b=max_len_b,
        tgt_lang=tgt_lang or "",
    )


async def _translate(model: ServedModel, lines: list[str], search: SearchConfig) -> list[list[Translation]]:
    try:
        return await model.batcher.translate(lines, search)
    except SeqtoolError as exc:
        raise ApiError(422, exc.message, exc.hint) from None


def _line_result(nbest: list[Translation], size: int, scores: bool) -> LineResult:
    def hyp(t: Translation) -> Hypothesis:
        return Hypothesis(text=t.text, log_prob=t.log_prob if scores else None, score=t.score if scores else None)

    best = hyp(nbest[0])
    return LineResult(
        **best.model_dump(),
        truncated=nbest[0].truncated,
        nbest=[hyp(t) for t in nbest[:size]] if size > 1 else None,
    )


def app_from_env() -> ASGIApp:
    """The app of one worker process of `seqtool serve --workers N` (an uvicorn factory)."""
    return create_app(ServeSpec.from_env())
