"""`seqtool serve` as a real server process on 127.0.0.1 with a real HTTP client: every endpoint, every bad request,
the API key, dynamic batching under concurrent clients, SIGTERM while a request is in flight, two worker processes.

Outputs are compared with offline `seqtool translate` of the same lines (fp32 weights: batch-invariant, so the
server's merged batches must give exactly the offline translations).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="the serve tests need httpx (pip install 'seqtool[dev]')")
pytest.importorskip("fastapi", reason="seqtool serve needs the serve extra (pip install 'seqtool[serve]')")

from tests.cli.helpers import write_config  # noqa: E402

SENTENCES = [
    "Save the file before closing.",
    "Open a new window",
    "",
    "The printer is not connected.",
    "Delete the selected messages?",
    "Cancel",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A `seqtool serve` process on a free loopback port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seqtool", "serve", *args, "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 120.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.communicate()[1][-3000:]
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("the server did not become ready")

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


def offline(run: Path, lines: list[str], *args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "seqtool", "translate", str(run), "--quantize", "none", *args],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def run(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    config = write_config(root / "tiny.yaml", tiny_corpus, "transformer", max_steps=40, eval_every=20)
    result = subprocess.run(
        [sys.executable, "-m", "seqtool", "train", str(config), "--run-dir", str(root / "run")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return root / "run"


@pytest.fixture(scope="module")
def server(run: Path) -> Iterator[Server]:
    srv = Server(str(run), "--quantize", "none", "--threads", "2", "--max-wait-ms", "20").wait_ready()
    yield srv
    code, err = srv.stop()
    assert code == 0, err


def test_health_and_models(server: Server, run: Path) -> None:
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["models"] == [run.name]
    [model] = httpx.get(server.url + "/v1/models").json()["models"]
    assert model["name"] == run.name and model["architecture"].startswith("Transformer 1+1 layers, d_model 32")
    assert model["steps"] == 40 and model["src_vocab"] == 400 and model["engine"] == "torch"
    assert model["decode"]["beam"] == 5


def test_translate_matches_offline_translate(server: Server, run: Path) -> None:
    answer = httpx.post(server.url + "/v1/translate", json={"text": SENTENCES}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == run.name
    texts = [t["text"] for t in body["translations"]]
    assert texts == offline(run, SENTENCES) and texts[2] == ""  # one output per line, empty in -> empty out
    assert "log_prob" not in body["translations"][0]  # scores only when asked


def test_nbest_and_scores_match_offline(server: Server, run: Path) -> None:
    request = {"text": SENTENCES[:2], "beam": 4, "nbest": 3, "scores": True, "length_penalty": 0.5}
    body = httpx.post(server.url + "/v1/translate", json=request, timeout=60).json()
    rows = offline(run, SENTENCES[:2], "--beam", "4", "--nbest", "3", "--length-penalty", "0.5")
    expected = [(int(n), text, float(score)) for n, text, score in (row.split("\t") for row in rows)]
    got = [(i + 1, h["text"], h["score"]) for i, t in enumerate(body["translations"]) for h in t["nbest"]]
    assert [(n, text) for n, text, _ in got] == [(n, text) for n, text, _ in expected]
    assert all(abs(a[2] - b[2]) < 1e-3 for a, b in zip(got, expected, strict=True))
    for line in body["translations"]:
        assert line["text"] == line["nbest"][0]["text"] and line["log_prob"] <= line["nbest"][0]["log_prob"] + 1e-9
        assert [h["score"] for h in line["nbest"]] == sorted((h["score"] for h in line["nbest"]), reverse=True)


def test_opennmt_rest_format(server: Server, run: Path) -> None:
    """The request and answer shapes of OpenNMT-py's REST server (`[{"src": ..., "id": 100}]`)."""
    request = [{"src": "this is a test for model 0", "id": 100}, {"src": SENTENCES[0], "id": 100}]
    answer = httpx.post(server.url + "/translator/translate", json=request, timeout=60)
    assert answer.status_code == 200, answer.text
    [items] = answer.json()
    assert [item["src"] for item in items] == [r["src"] for r in request]
    assert [item["tgt"] for item in items] == offline(run, [r["src"] for r in request])
    assert all(item["n_best"] == 1 and isinstance(item["pred_score"], float) for item in items)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{", 400, "invalid JSON"),
        (b'{"text": ["\xff"]}', 400, "not valid UTF-8"),
        (b"", 400, "empty"),
        (b'{"text": "one string"}', 422, "text: Input should be a valid list"),
        (b'{"text": [1, 2]}', 422, "text.0"),
        (b'{"text": ["a"], "beam": -1}', 422, "beam"),
        (b'{"text": ["a"], "beam": "5"}', 422, "beam"),
        (b'{"text": ["a"], "beam": 999}', 422, "larger than this server allows"),
        (b'{"text": ["a"], "model": "nope"}', 404, "unknown model"),
        (b'{"text": []}', 422, "nothing to translate"),
        (b'{"text": ["a"], "colour": "red"}', 422, "colour"),
        (json.dumps({"text": ["a"] * 300}).encode(), 413, "300 lines"),
        (json.dumps({"text": ["x" * 3000]}).encode(), 413, "3,000 characters"),
        (b'{"text": ["' + b"a" * 1_100_000 + b'"]}', 413, "larger than 1,000,000 bytes"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_json_error(server: Server, body: bytes, status: int, needle: str) -> None:
    answer = httpx.post(server.url + "/v1/translate", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert set(error) == {"error", "hint"} and needle in error["error"] and "Traceback" not in answer.text


def test_bad_opennmt_requests_and_unknown_paths(server: Server) -> None:
    for body, status in ((b'{"src": "x"}', 422), (b'[{"text": "x"}]', 422), (b"[]", 422)):
        answer = httpx.post(server.url + "/translator/translate", content=body)
        assert answer.status_code == status and "error" in answer.json(), answer.text
    answer = httpx.get(server.url + "/no/such/page")
    assert answer.status_code == 404 and "POST /v1/translate" in answer.json()["hint"]
    assert httpx.get(server.url + "/v1/translate").status_code == 405


def test_one_bad_request_does_not_disturb_the_others(server: Server, run: Path) -> None:
    def good(i: int) -> list[str]:
        body = httpx.post(server.url + "/v1/translate", json={"text": [SENTENCES[i % 2]]}, timeout=60).json()
        return [t["text"] for t in body["translations"]]

    def bad(_: int) -> int:
        return httpx.post(server.url + "/v1/translate", content=b'{"text": [1]}', timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(good, i) for i in range(8)]
        bads = [pool.submit(bad, i) for i in range(8)]
        expected = offline(run, SENTENCES[:2])
        assert [f.result() for f in goods] == [[expected[i % 2]] for i in range(8)]
        assert [f.result() for f in bads] == [422] * 8


def test_concurrent_clients_are_decoded_in_shared_batches(run: Path, tiny_corpus: dict) -> None:
    # an idle model waits 500 ms for company: on a busy CI host, 30 clients' requests took more than 20 ms to arrive
    srv = Server(str(run), "--quantize", "none", "--threads", "2", "--max-wait-ms", "500").wait_ready()
    try:
        lines = tiny_corpus["test.en"].read_text(encoding="utf-8").splitlines()[:30]
        barrier = threading.Barrier(30)

        def one(line: str) -> str:
            barrier.wait()
            body = httpx.post(srv.url + "/v1/translate", json={"text": [line]}, timeout=120).json()
            return body["translations"][0]["text"]

        with ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(one, lines))
        assert answers == offline(run, lines)
        model = httpx.get(srv.url + "/v1/models").json()["models"][0]
        assert model["sentences"] == 30
        assert model["most_lines_together"] >= 8, model  # decoded together, not one by one
    finally:
        code, err = srv.stop()
        assert code == 0, err


def test_continuous_batching_gives_the_offline_translations(run: Path, tiny_corpus: dict) -> None:
    """`--batching continuous`: lines join a running beam search; each answer is still the offline translation."""
    lines = tiny_corpus["test.en"].read_text(encoding="utf-8").splitlines()[:30]
    srv = Server(
        str(run), "--quantize", "none", "--threads", "2", "--batching", "continuous", "--max-wait-ms", "500"
    ).wait_ready()
    try:
        barrier = threading.Barrier(30)

        def one(line: str) -> str:
            barrier.wait()
            body = httpx.post(srv.url + "/v1/translate", json={"text": [line], "beam": 3}, timeout=120).json()
            return body["translations"][0]["text"]

        with ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(one, lines))
        assert answers == offline(run, lines, "--beam", "3")
        model = httpx.get(srv.url + "/v1/models").json()["models"][0]
        assert model["sentences"] == 30 and model["most_lines_together"] >= 8, model
    finally:
        code, err = srv.stop()
    assert code == 0, err


def test_a_client_that_goes_away_does_not_break_the_batch(server: Server, run: Path) -> None:
    long = {"text": [SENTENCES[0]] * 200, "beam": 8}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/translate", json=long, timeout=0.05)
    body = httpx.post(server.url + "/v1/translate", json={"text": SENTENCES[:2]}, timeout=120).json()
    assert [t["text"] for t in body["translations"]] == offline(run, SENTENCES[:2])
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_the_page_is_served_without_external_assets(server: Server) -> None:
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="source"' in page.text and 'id="go"' in page.text and "/v1/translate" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # works offline


def test_api_key(run: Path) -> None:
    srv = Server(str(run), "--api-key-env", "SEQTOOL_TEST_KEY", env={"SEQTOOL_TEST_KEY": "s3cret"}).wait_ready()
    try:
        assert httpx.get(srv.url + "/health").status_code == 200  # open, for load balancers
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"}):
            answer = httpx.post(srv.url + "/v1/translate", json={"text": ["a"]}, headers=headers)
            assert answer.status_code == 401 and "API key" in answer.json()["error"], headers
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        for headers in ({"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}):
            answer = httpx.post(srv.url + "/v1/translate", json={"text": ["Cancel"]}, headers=headers, timeout=60)
            assert answer.status_code == 200, answer.text
    finally:
        code, err = srv.stop()
    assert code == 0, err


def test_sigterm_lets_the_request_in_flight_finish(run: Path) -> None:
    srv = Server(str(run), "--quantize", "none", "--threads", "1").wait_ready()
    lines = [f"{SENTENCES[0]} {SENTENCES[3]} {i}" for i in range(120)]
    result: dict[str, httpx.Response] = {}
    sender = threading.Thread(
        target=lambda: result.update(answer=httpx.post(srv.url + "/v1/translate", json={"text": lines}, timeout=300))
    )
    sender.start()
    time.sleep(1.0)  # the request is being decoded
    srv.proc.send_signal(signal.SIGTERM)
    sender.join(300)
    code, err = srv.stop()
    assert result["answer"].status_code == 200, result["answer"].text
    assert len(result["answer"].json()["translations"]) == 120
    assert code == 0 and "Traceback" not in err, err
    with pytest.raises(httpx.TransportError):
        httpx.get(srv.url + "/health", timeout=2)  # it stopped accepting


def test_two_worker_processes(run: Path) -> None:
    srv = Server(str(run), "--workers", "2", "--quantize", "none").wait_ready(timeout=180)
    try:
        deadline = time.monotonic() + 60
        pids: set[int] = set()
        with ThreadPoolExecutor(8) as pool:
            while len(pids) < 2 and time.monotonic() < deadline:
                answers = list(pool.map(lambda _: httpx.get(srv.url + "/health", timeout=10).json(), range(16)))
                pids |= {a["pid"] for a in answers if a["status"] == "ok"}
                bodies = list(
                    pool.map(
                        lambda line: httpx.post(srv.url + "/v1/translate", json={"text": [line]}, timeout=120),
                        SENTENCES * 2,
                    )
                )
                assert all(b.status_code == 200 for b in bodies)
        assert len(pids) == 2, pids  # both processes answered
        assert srv.proc.pid not in pids
    finally:
        code, err = srv.stop()
    assert code == 0, err


def test_a_model_that_cannot_load_stops_the_start(run: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "seqtool", "serve", str(run), str(tmp_path), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "not a seqtool run directory" in result.stderr
    assert "Traceback" not in result.stderr
