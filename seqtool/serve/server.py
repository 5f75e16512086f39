"""Running the server: load the models (a load failure stops the start with a clear error), then uvicorn until
SIGTERM/SIGINT, which stop accepting connections, let the requests in flight finish, and exit cleanly."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator

from seqtool.errors import CheckpointError, ConfigError
from seqtool.serve.registry import SPEC_ENV, ServeSpec, load_models


def check_runs(spec: ServeSpec) -> None:
    """What can be known of every run without loading its weights: a run directory with a checkpoint (or export)."""
    from seqtool.rundir import RunDir, read_run_config, resolve_checkpoint

    for model in spec.models:
        run = RunDir(model.run_dir)
        read_run_config(run)
        if spec.options.engine == "ctranslate2":
            target = spec.options.ct2_model or run.root / "ctranslate2"
            if not target.exists():
                raise CheckpointError(
                    f"no CTranslate2 model at {target}",
                    f"export it first: seqtool export {run.root} --format ctranslate2 -o {target}",
                )
        else:
            resolve_checkpoint(run, spec.options.checkpoint)


def serve(
    spec: ServeSpec, log: Callable[[str], None] | None = None, ready: Callable[[str], None] | None = None
) -> None:
    """Serve `spec` on its host and port until a stop signal; `log` gets messages for the user (the models loaded,
    their warnings, where it listens), `ready(url)` is called once it accepts requests.

    With `spec.limits.workers` > 1, that many processes each load the models (uvicorn workers); the CPU threads
    (`options.threads`, 0 = one per core) are shared out among them.
    """
    import uvicorn

    from seqtool.serve.app import create_app

    limits = spec.limits
    if limits.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {limits.workers}")
    url = f"http://{limits.host}:{limits.port}"
    _check_port(limits.host, limits.port)
    common = {
        "host": limits.host,
        "port": limits.port,
        "log_level": "warning",
        "timeout_graceful_shutdown": limits.graceful_seconds,
        "access_log": False,
    }
    say = log or (lambda message: None)
    if limits.workers > 1:
        check_runs(spec)
        say(f"serving at {url} with {limits.workers} worker processes, each loading the models")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = spec.options.threads or max(1, cores // limits.workers)
        spec = dataclasses.replace(spec, options=dataclasses.replace(spec.options, threads=threads))
        os.environ[SPEC_ENV] = spec.to_env()
        if ready is not None:
            ready(url)
        with _stop_signals_end_cleanly():
            uvicorn.run("seqtool.serve.app:app_from_env", factory=True, workers=limits.workers, **common)
        return
    models = load_models(spec)  # before the port opens: a model that cannot load stops the start here
    for model in models.values():
        say(f"loaded {model.spec.name} from {model.spec.run_dir} ({model.info['architecture']})")
        for warning in model.translator.warnings:
            say(f"warning: {model.spec.name}: {warning}")
    server = uvicorn.Server(uvicorn.Config(create_app(spec, models), **common))

    def started() -> None:
        say(f"serving {', '.join(models)} at {url} (the page: {url}/); Ctrl-C or SIGTERM to stop")
        if ready is not None:
            ready(url)

    _call_when_started(server, started)
    with _stop_signals_end_cleanly():
        server.run()
    say("stopped")


@contextlib.contextmanager
def _stop_signals_end_cleanly() -> Iterator[None]:
    """uvicorn handles SIGTERM/SIGINT itself (stop accepting, drain, shut down), then raises the signal again with the
    handlers it found in place: with these no-op handlers, that ends the process with exit code 0, not by the signal."""
    if threading.current_thread() is not threading.main_thread():  # uvicorn installs no handlers there either
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_port(host: str, port: int) -> None:
    """A clear error now, rather than uvicorn's log line after the models loaded, when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}", "is another server there? choose --port"
            ) from None


def _call_when_started(server: object, callback: Callable[[], None]) -> None:
    """Call `callback` once uvicorn has bound its socket (it has no hook for that; its `startup` is wrapped)."""
    startup = server.startup  # type: ignore[attr-defined]

    async def started(*args: object, **kwargs: object) -> None:
        await startup(*args, **kwargs)
        if server.started:  # type: ignore[attr-defined]
            callback()

    server.startup = started  # type: ignore[attr-defined]
