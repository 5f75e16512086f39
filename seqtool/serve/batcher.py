"""Dynamic batching: concurrent requests for one model decoded together by its decoding threads.

A model has one decoding thread per worker of a beam search (`Translator.parallelism`). A thread serves one search
(beam, n-best, length penalty, ...) at a time, in one of two ways:

- **rounds** (the default): the thread takes waiting lines up to the token budget, translates them in one `translate`
  call as one batch, in this thread, and hands each request its lines back. Then it waits a moment (at most a tenth
  of the round's time) for as many new lines as it answered: clients in a loop send their next line as soon as they
  have an answer, and a round started without them would leave them waiting while the other rounds run part-empty;
- **continuous batching** (`continuous=True`, where the engine offers a `TranslationStream`: seqtool's beam search):
  waiting lines join the running search between two of its steps, and each line's answer leaves as soon as that line
  is done, so the batch stays full while clients come and go. On a 2-core CPU this measured slower than rounds
  (32 clients: 0.57 of offline against 0.75): sentences of mixed lengths widen every row's key/value cache, and
  copying the caches dominates a CPU's decoder step. Where a step costs the same for any width (a GPU), it pays.

Lines are taken round-robin over the waiting requests with the same search, a few at a time, so a long request
cannot starve the short ones behind it. What waits is shared out among the threads (a thread takes its share of the
tokens waiting and live, up to `max_batch_tokens`), so that none idles while another holds it all. When the model is
idle, a thread waits up to `max_wait_ms` for company before it starts. A thread stops taking new lines while an
older request with another search waits, and switches to it once its own search is empty.

One bad request never breaks the others: lines of a request whose client went away (its future cancelled) are
skipped, and an error while decoding is passed to the requests that had lines in that batch only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from seqtool.decode import TranslatorLike
from seqtool.decode.search import SearchConfig
from seqtool.decode.translate import Translation, TranslationStream

TURN_SHARE = 4  # a request's turn takes at most 1/TURN_SHARE of the token budget (at least one line)
ONE_BATCH = sys.maxsize  # the token budget a round is translated with: one batch (`_take` keeps it in the budget)
RETURN_SHARE = 0.1  # a thread waits for its clients' next lines at most this share of the round it answered


@dataclass(eq=False)
class _Request:
    """One request: its lines still waiting, where its results go, and how many are not done yet."""

    search: SearchConfig
    results: list[list[Translation] | None]
    future: asyncio.Future[list[list[Translation]]]
    loop: asyncio.AbstractEventLoop
    waiting: deque[tuple[int, str, int]] = field(default_factory=deque)  # (line index, line, token cost)
    arrived: float = field(default_factory=time.monotonic)
    left: int = 0  # lines not done yet

    def gone(self) -> bool:
        return self.future.cancelled()


Line = tuple[_Request, int, str, int]  # request, line index, line, token cost


def _search_key(cfg: SearchConfig) -> tuple[Any, ...]:
    """Requests whose searches can share one batch: the same options."""
    return dataclasses.astuple(cfg)


class Batcher:
    """One model's batching (daemon decoding threads); `translate` is awaited from the server's event loop."""

    def __init__(
        self,
        translator: TranslatorLike,
        max_batch_tokens: int,
        max_wait_ms: float,
        max_input_len: int,
        count_tokens: Callable[[Sequence[str]], list[int]],
        continuous: bool = False,
    ) -> None:
        self.translator = translator
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0
        self.max_input_len = max_input_len
        self.count_tokens = count_tokens  # lines -> source pieces per line
        self.continuous = continuous  # lines join a running search where the engine can; else rounds
        self._waiting: dict[tuple[Any, ...], deque[_Request]] = {}
        self._cond = threading.Condition()
        self._closing = False
        self._active = 0  # threads decoding now
        self._live_tokens: dict[int, int] = {}  # per decoding thread: the token cost of its lines being decoded
        self._arrived_lines = 0  # lines received so far (a thread waits for as many as it has just answered)
        self.rounds = 0  # groups of lines started together: rounds, or admissions into a running search
        self.sentences = 0
        self.most_together = 0  # the most lines decoded together so far (one batch or one running search)
        most = max(1, translator.parallelism(SearchConfig(beam=2))[0])
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"seqtool-batcher-{i}", daemon=True) for i in range(most)
        ]
        for thread in self._threads:
            thread.start()

    async def translate(self, lines: Sequence[str], search: SearchConfig) -> list[list[Translation]]:
        """The n-best lists of `lines`, in order, decoded together with whatever else is waiting."""
        if not lines:
            return []
        loop = asyncio.get_running_loop()
        request = _Request(search, [None] * len(lines), loop.create_future(), loop, left=len(lines))
        for i, (line, count) in enumerate(zip(lines, self.count_tokens(lines), strict=True)):
            request.waiting.append((i, line, (min(count, self.max_input_len) + 1) * search.rows_per_sentence))
        with self._cond:
            if self._closing:
                raise RuntimeError("the server is shutting down")
            self._waiting.setdefault(_search_key(search), deque()).append(request)
            self._arrived_lines += len(lines)
            self._cond.notify_all()
        return await request.future

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is waiting and being decoded, then stop the threads."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # -- the decoding threads -----------------------------------------------------------------------------------------
    def _run(self, me: int) -> None:
        back: tuple[int, int, float] | None = None  # after a round: (lines answered, lines arrived then, wait until)
        while True:
            with self._cond:
                while not self._closing and not (self._any_waiting() and self._may_start(self._oldest()[1].search)):
                    self._cond.wait()
                if self._closing and not self._any_waiting():
                    return
                if not self._may_start(self._oldest()[1].search):
                    self._cond.wait(0.05)  # closing, with others still decoding: wait for a free worker
                    continue
                key, oldest = self._oldest()
                # an idle model gives other requests until max_wait after the oldest arrived to join
                while self._active == 0 and not self._closing and self._queued_tokens(key) < self.max_batch_tokens:
                    left = oldest.arrived + self.max_wait - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if back is not None:
                    self._await_return(key, *back)
                    back = None
                if not self._any_waiting():
                    continue  # another thread took them meanwhile
                key, oldest = self._oldest()
                search = oldest.search
                self._active += 1
                stream = self.translator.stream(search, self.max_input_len) if self.continuous else None
                taken = [] if stream is not None else self._take(me, key, search)
                self._live_tokens[me] = sum(cost for _, _, _, cost in taken)
            try:
                if stream is not None:
                    self._run_stream(me, key, stream)
                elif taken:
                    started = time.monotonic()
                    mark = self._run_round(taken, search)
                    if mark is not None:
                        ended = time.monotonic()
                        back = (len(taken), mark, ended + RETURN_SHARE * (ended - started))
            finally:
                with self._cond:
                    self._active -= 1
                    self._live_tokens.pop(me, None)
                    self._cond.notify_all()

    def _run_round(self, taken: list[Line], search: SearchConfig) -> int | None:
        """Translate the lines in one `translate` call and hand them to their requests; the count of lines arrived
        so far when they were handed (None after an error)."""
        try:
            # one batch, decoded in this thread: `_take` kept the round within the budget, and a round split in two
            # would start a pool of workers beside the other decoding threads (more threads than cores)
            results = self.translator.translate(
                [line for _, _, line, _ in taken], search, ONE_BATCH, self.max_input_len
            )
        except Exception as exc:  # handed to the requests of this round: it never kills the thread
            self._fail({request for request, _, _, _ in taken}, exc)
            return None
        with self._cond:
            self.rounds += 1
            self.most_together = max(self.most_together, len(taken))
            self._deliver([(request, i, nbest) for (request, i, _, _), nbest in zip(taken, results, strict=True)])
            return self._arrived_lines

    def _run_stream(self, me: int, key: tuple[Any, ...], stream: TranslationStream) -> None:
        """Continuous batching: admit waiting lines between the steps of one running search until it is empty."""
        live: dict[tuple[_Request, int], int] = {}  # (request, line index) -> token cost
        while True:
            with self._cond:
                self._live_tokens[me] = sum(live.values())
                taken = [] if self._switch_due(key) else self._take(me, key, stream.cfg)
                if taken:
                    self.rounds += 1
            try:
                if taken:
                    keys = [(request, i) for request, i, _, _ in taken]
                    live.update(((request, i), cost) for request, i, _, cost in taken)
                    self.most_together = max(self.most_together, len(live))
                    done = stream.admit([line for _, _, line, _ in taken], keys)
                else:
                    done = []
                if stream.live:
                    done += stream.step()
            except Exception as exc:  # the requests with lines in this search get the error; the thread goes on
                self._fail({request for request, _ in live}, exc)
                return
            if done:
                with self._cond:
                    self._deliver([(request, i, nbest) for (request, i), nbest in done])
                for line_key, _ in done:
                    live.pop(line_key, None)
            if not stream.live:
                return

    # -- the queue (called with the lock held) ------------------------------------------------------------------------
    def _await_return(self, key: tuple[Any, ...], answered: int, mark: int, until: float) -> None:
        """After answering `answered` lines: wait until as many new lines have arrived, the budget is full, or `until`.

        Clients in a loop send their next line moments after their answer. A thread that started at once would take
        only what already waited, and the returning lines would wait out a whole round: with 32 clients and two
        threads, a third of the clients waited while two rounds of ~10 lines ran (rounds of 16 decode 30 % faster).
        """
        while (
            not self._closing
            and self._arrived_lines - mark < answered
            and self._queued_tokens(key) < self.max_batch_tokens
        ):
            left = until - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _may_start(self, search: SearchConfig) -> bool:
        """Whether another thread may start now: at most as many at once as the search has workers (greedy: one)."""
        return self._active < max(1, self.translator.parallelism(search)[0])

    def _any_waiting(self) -> bool:
        for key in list(self._waiting):
            queue = self._waiting[key]
            while queue and (queue[0].gone() or not queue[0].waiting):
                queue.popleft()
            if not queue:
                del self._waiting[key]
        return bool(self._waiting)

    def _oldest(self) -> tuple[tuple[Any, ...], _Request]:
        key = min(self._waiting, key=lambda k: self._waiting[k][0].arrived)
        return key, self._waiting[key][0]

    def _switch_due(self, key: tuple[Any, ...]) -> bool:
        """Whether a request with another search waits longer than every one with `key` (then stop taking `key`)."""
        return self._any_waiting() and self._oldest()[0] != key

    def _queued_tokens(self, key: tuple[Any, ...]) -> int:
        return sum(cost for request in self._waiting.get(key, ()) for _, _, cost in request.waiting)

    def _take(self, me: int, key: tuple[Any, ...], search: SearchConfig) -> list[Line]:
        """Waiting lines with this search, round-robin over their requests, up to this thread's share of the budget.

        The share: the tokens waiting and being decoded, spread over the search's workers, at most `max_batch_tokens`;
        a thread with nothing live takes at least one line.
        """
        queue = self._waiting.get(key)
        if not queue:
            return []
        mine = self._live_tokens.get(me, 0)
        workers = max(1, self.translator.parallelism(search)[0])
        share = -(-(self._queued_tokens(key) + sum(self._live_tokens.values())) // workers)
        budget = min(self.max_batch_tokens, share) - mine
        taken: list[Line] = []
        used = 0
        while queue:
            request = queue.popleft()
            if request.gone():
                continue
            turn = 0
            while request.waiting:
                i, line, cost = request.waiting[0]
                if (taken or mine) and used + cost > budget:
                    break
                if turn and turn + cost > self.max_batch_tokens // TURN_SHARE:
                    break
                request.waiting.popleft()
                taken.append((request, i, line, cost))
                used += cost
                turn += cost
            if request.waiting:
                if used + request.waiting[0][2] > budget and (taken or mine):
                    queue.appendleft(request)  # its next line waits for the next batch, first in line
                    break
                queue.append(request)  # its next lines wait for its next turn
        if not queue:
            self._waiting.pop(key, None)
        return taken

    def _deliver(self, done: Sequence[tuple[_Request, int, list[Translation]]]) -> None:
        """Hand finished lines to their requests; a request is answered when its last line is done."""
        for request, i, nbest in done:
            request.results[i] = nbest
            request.left -= 1
            self.sentences += 1
            if request.left == 0:
                request.loop.call_soon_threadsafe(_finish, request.future, request.results)

    def _fail(self, requests: set[_Request], exc: Exception) -> None:
        with self._cond:
            for request in requests:
                request.waiting.clear()
                request.loop.call_soon_threadsafe(_fail, request.future, exc)


def _finish(future: asyncio.Future[Any], results: list[Any]) -> None:
    if not future.done():
        future.set_result(results)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
