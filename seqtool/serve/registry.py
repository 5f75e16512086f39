"""The models a server holds: each run loaded once (through `decode.load_translator`) with its batching loop."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqtool.config import ServeConfig
from seqtool.decode import DecodeOptions, TranslatorLike, load_translator
from seqtool.errors import ConfigError, SeqtoolError
from seqtool.serve.batcher import Batcher

SPEC_ENV = "SEQTOOL_SERVE_SPEC"  # how `seqtool serve --workers N` hands its settings to each worker process


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve: its name in requests and its run directory."""

    name: str
    run_dir: Path


@dataclass
class ServedModel:
    """A loaded model: the translator, its batching loop and what `seqtool info` knows of the run."""

    spec: ModelSpec
    translator: TranslatorLike
    batcher: Batcher
    info: dict[str, Any]


@dataclass(frozen=True)
class ServeSpec:
    """Everything a server process needs to start: the models, how to run them, the limits, the API key."""

    models: tuple[ModelSpec, ...]
    options: DecodeOptions
    limits: ServeConfig
    api_key: str | None = None

    def to_env(self) -> str:
        """JSON for SPEC_ENV (read back by `from_env` in each worker process)."""
        payload = {
            "models": [[m.name, str(m.run_dir)] for m in self.models],
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self.options).items()},
            "limits": dataclasses.asdict(self.limits),
            "api_key": self.api_key,
        }
        return json.dumps(payload)

    @classmethod
    def build(
        cls, run_args: list[str], options: DecodeOptions, limits: ServeConfig, api_key_env: str | None = None
    ) -> ServeSpec:
        """The spec of `seqtool serve`'s arguments: RUN_DIR / NAME=RUN_DIR models, and the API key's variable."""
        api_key = None
        if api_key_env is not None:
            api_key = os.environ.get(api_key_env, "")
            if not api_key.strip():
                raise ConfigError(
                    f"--api-key-env {api_key_env}: that environment variable is not set or empty",
                    f"export {api_key_env}=... (a long random string) before starting the server",
                )
        return cls(parse_model_args(run_args), options, limits, api_key)

    @classmethod
    def from_env(cls) -> ServeSpec:
        """The spec a `seqtool serve --workers N` parent process put in the environment."""
        raw = os.environ.get(SPEC_ENV)
        if not raw:
            raise SeqtoolError(f"{SPEC_ENV} is not set", "start the server with seqtool serve")
        payload = json.loads(raw)
        options = payload["options"]
        if options.get("ct2_model"):
            options["ct2_model"] = Path(options["ct2_model"])
        return cls(
            models=tuple(ModelSpec(name, Path(path)) for name, path in payload["models"]),
            options=DecodeOptions(**options),
            limits=ServeConfig(**payload["limits"]),
            api_key=payload["api_key"],
        )


def parse_model_args(args: list[str]) -> tuple[ModelSpec, ...]:
    """`RUN_DIR` or `NAME=RUN_DIR` arguments -> specs; a name is the run directory's name unless given."""
    specs: list[ModelSpec] = []
    for arg in args:
        name, sep, path = arg.partition("=")
        run_dir = Path(path if sep else arg)
        name = name if sep else run_dir.resolve().name
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigError(
                f"model name {name!r} is not usable in requests",
                "use letters, digits, '-', '_' and '.', e.g. NAME=RUN_DIR",
            )
        if any(s.name == name for s in specs):
            raise ConfigError(f"two models are called {name!r}", "name them: NAME=RUN_DIR")
        specs.append(ModelSpec(name, run_dir))
    if not specs:
        raise ConfigError("no model to serve", "give one or more run directories")
    return tuple(specs)


def load_models(spec: ServeSpec) -> dict[str, ServedModel]:
    """Load every model once, each with its own batching loop; the first that fails stops the server's start."""
    from seqtool.run_info import run_info

    loaded: dict[str, ServedModel] = {}
    try:
        for model in spec.models:
            translator = load_translator(model.run_dir, spec.options)
            tokenizer = translator.tokenizer
            batcher = Batcher(
                translator,
                spec.limits.max_batch_tokens,
                spec.limits.max_wait_ms,
                translator.config.decode.max_input_len,
                lambda lines, tok=tokenizer: [len(ids) for ids in tok.src.encode(lines)],
                continuous=spec.limits.batching == "continuous",
            )
            info = dataclasses.asdict(run_info(model.run_dir))
            info.pop("changed_from_defaults", None)
            info.update(
                name=model.name, engine=spec.options.engine, decode=dataclasses.asdict(translator.config.decode)
            )
            loaded[model.name] = ServedModel(model, translator, batcher, info)
    except BaseException:
        close_models(loaded)
        raise
    return loaded


def close_models(models: dict[str, ServedModel]) -> None:
    """Let every batching loop finish what it holds, then stop it."""
    for model in models.values():
        model.batcher.close()
