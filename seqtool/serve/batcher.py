"""Dynamic batching: concurrent requests for one model merged into token-budget batches by its decoding threads.

Each request is split into chunks of a few lines; a decoding thread (one per worker of a beam search, each with its
own round, so that a long sentence holds up only its own round) takes chunks round-robin over the waiting
requests with the same search options (a long request cannot starve the short ones behind it) until the token
budget of one round is reached, translates them in one `translate` call (which sorts them by length and searches
them as token-budget batches, on the translator's workers), and hands each request its lines back in order. When
the model is idle, the thread waits up to `max_wait_ms` for company before it runs a partial round.

One bad request never breaks the others: a request whose client went away (its future cancelled) is skipped, and
an error in a round is passed to the requests of that round only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from seqtool.decode import TranslatorLike
from seqtool.decode.search import SearchConfig
from seqtool.decode.translate import Translation

CHUNK_SHARE = 4  # a chunk holds at most 1/CHUNK_SHARE of a round's token budget


@dataclass(eq=False)
class _Request:
    """One request: its lines, where its results go, and the chunks still to translate."""

    search: SearchConfig
    results: list[list[Translation] | None]
    future: asyncio.Future[list[list[Translation]]]
    loop: asyncio.AbstractEventLoop
    chunks: deque[tuple[int, list[str], int]] = field(default_factory=deque)  # (first line, lines, tokens)
    arrived: float = field(default_factory=time.monotonic)
    left: int = 0  # chunks not yet translated

    def gone(self) -> bool:
        return self.future.cancelled()


def _search_key(cfg: SearchConfig) -> tuple[Any, ...]:
    """Requests whose searches can share one `translate` call."""
    return (cfg.beam, cfg.nbest, cfg.length_penalty, cfg.max_len_a, cfg.max_len_b, cfg.length_penalty_kind, cfg.stop)


class Batcher:
    """One model's batching loop (a daemon thread); `translate` is awaited from the server's event loop."""

    def __init__(
        self,
        translator: TranslatorLike,
        max_batch_tokens: int,
        max_wait_ms: float,
        max_input_len: int,
        count_tokens: Any,
    ) -> None:
        self.translator = translator
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0
        self.max_input_len = max_input_len
        self.count_tokens = count_tokens  # lines -> source pieces per line
        self._waiting: dict[tuple[Any, ...], deque[_Request]] = {}
        self._cond = threading.Condition()
        self._closing = False
        self._active = 0  # rounds being translated now
        self.rounds = 0  # translate calls made (for tests and metrics)
        self.sentences = 0
        # one decoding thread per worker of a beam search: each translates its own round, so that a round's longest
        # sentence holds up only its own thread while the others take the requests that arrive meanwhile
        most = max(1, translator.parallelism(SearchConfig(beam=2))[0])
        self._threads = [
            threading.Thread(target=self._run, name=f"seqtool-batcher-{i}", daemon=True) for i in range(most)
        ]
        for thread in self._threads:
            thread.start()

    async def translate(self, lines: Sequence[str], search: SearchConfig) -> list[list[Translation]]:
        """The n-best lists of `lines`, in order, decoded together with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        request = _Request(search, [None] * len(lines), loop.create_future(), loop)
        if not lines:
            return []
        budget = self._round_tokens(search)
        first, chunk, tokens = 0, [], 0
        for i, count in enumerate(self.count_tokens(lines)):
            cost = (min(count, self.max_input_len) + 1) * search.beam
            if chunk and tokens + cost > budget // CHUNK_SHARE:
                request.chunks.append((first, chunk, tokens))
                first, chunk, tokens = i, [], 0
            chunk.append(lines[i])
            tokens += cost
        request.chunks.append((first, chunk, tokens))
        request.left = len(request.chunks)
        with self._cond:
            if self._closing:
                raise RuntimeError("the server is shutting down")
            self._waiting.setdefault(_search_key(search), deque()).append(request)
            self._cond.notify_all()
        return await request.future

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is waiting, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _round_tokens(self, search: SearchConfig) -> int:
        return self.max_batch_tokens

    def _may_start(self, search: SearchConfig) -> bool:
        """Whether another round may run now: at most as many at once as the search has workers (greedy: one)."""
        return self._active < max(1, self.translator.parallelism(search)[0])

    # -- the decoding thread ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not (self._any_waiting() and self._may_start(self._oldest()[1].search)):
                    self._cond.wait()
                if self._closing and not self._any_waiting():
                    return
                if not self._may_start(self._oldest()[1].search):
                    self._cond.wait(0.05)  # closing, with rounds still running: wait for a free worker
                    continue
                key, oldest = self._oldest()
                # an idle model gives other requests until max_wait after the oldest arrived to join the round
                while self._active == 0 and not self._closing and self._queued_tokens(key) < self.max_batch_tokens:
                    left = oldest.arrived + self.max_wait - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if not self._any_waiting():
                    continue  # another thread took them meanwhile
                key, oldest = self._oldest()
                # what waits is shared out among the free workers, so that none idles while another holds it all
                free = max(1, self.translator.parallelism(oldest.search)[0] - self._active)
                share = -(-self._queued_tokens(key) // free)
                taken = self._take(key, min(self._round_tokens(oldest.search), share))
                self._active += 1
            try:
                if taken:
                    self._translate_round(taken)
            finally:
                with self._cond:
                    self._active -= 1
                    self._cond.notify_all()

    def _any_waiting(self) -> bool:
        for key in list(self._waiting):
            queue = self._waiting[key]
            while queue and queue[0].gone():
                queue.popleft()
            if not queue:
                del self._waiting[key]
        return bool(self._waiting)

    def _oldest(self) -> tuple[tuple[Any, ...], _Request]:
        key = min(self._waiting, key=lambda k: self._waiting[k][0].arrived)
        return key, self._waiting[key][0]

    def _queued_tokens(self, key: tuple[Any, ...]) -> int:
        return sum(tokens for request in self._waiting.get(key, ()) for _, _, tokens in request.chunks)

    def _take(self, key: tuple[Any, ...], budget: int) -> list[tuple[_Request, int, list[str]]]:
        """Chunks round-robin over the requests with this search, up to `budget` tokens (at least one chunk)."""
        queue = self._waiting.get(key, deque())
        taken: list[tuple[_Request, int, list[str]]] = []
        used = 0
        while queue:
            request = queue.popleft()
            if request.gone():
                continue
            first, lines, tokens = request.chunks[0]
            if taken and used + tokens > budget:
                queue.appendleft(request)
                break
            request.chunks.popleft()
            taken.append((request, first, lines))
            used += tokens
            if request.chunks:
                queue.append(request)  # its next chunk waits for its turn
        if not queue:
            self._waiting.pop(key, None)
        return taken

    def _translate_round(self, taken: list[tuple[_Request, int, list[str]]]) -> None:
        lines = [line for _, _, chunk in taken for line in chunk]
        search = taken[0][0].search
        try:
            results = self.translator.translate(lines, search, self.max_batch_tokens, self.max_input_len)
        except Exception as exc:  # handed to the requests of this round: it never kills the thread
            for request in {request for request, _, _ in taken}:
                request.loop.call_soon_threadsafe(_fail, request.future, exc)
            return
        with self._cond:
            self.rounds += 1
            self.sentences += len(lines)
        at = 0
        for request, first, chunk in taken:
            request.results[first : first + len(chunk)] = results[at : at + len(chunk)]
            at += len(chunk)
            request.left -= 1
            if request.left == 0:
                request.loop.call_soon_threadsafe(_finish, request.future, request.results)


def _finish(future: asyncio.Future[Any], results: list[Any]) -> None:
    if not future.done():
        future.set_result(results)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
