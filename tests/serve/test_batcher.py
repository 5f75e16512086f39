"""The batcher's scheduling, on a scripted engine whose lines take a known number of steps ("5" takes five)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Sequence

import pytest

from seqtool.config import Config
from seqtool.decode.search import SearchConfig
from seqtool.decode.translate import Translation, length_batches
from seqtool.serve.batcher import Batcher

STEP_SECONDS = 0.002


class ScriptedStream:
    """A search where line "n" is done after n steps; it records what is live at every step."""

    def __init__(self, engine: ScriptedEngine, cfg: SearchConfig) -> None:
        self.engine, self.cfg = engine, cfg
        self.left: dict[Hashable, int] = {}
        self.texts: dict[Hashable, str] = {}

    @property
    def live(self) -> int:
        return len(self.left)

    def admit(self, lines: Sequence[str], keys: Sequence[Hashable]) -> list[tuple[Hashable, list[Translation]]]:
        self.engine.admissions.append((len(self.left), len(lines)))
        for line, key in zip(lines, keys, strict=True):
            self.left[key] = int(line.split()[0])
            self.texts[key] = line
        return []

    def step(self) -> list[tuple[Hashable, list[Translation]]]:
        if self.engine.fail_on in self.texts.values():
            raise RuntimeError("the engine broke")
        time.sleep(STEP_SECONDS)
        self.engine.steps += 1
        done = []
        for key in list(self.left):
            self.left[key] -= 1
            if self.left[key] <= 0:
                del self.left[key]
                done.append((key, [Translation(f"out {self.texts.pop(key)}", -1.0, -1.0)]))
        return done


class ScriptedEngine:
    """A `TranslatorLike` with one worker whose beam searches are `ScriptedStream`s."""

    engine = "scripted"

    def __init__(self) -> None:
        self.config = Config()
        self.warnings: list[str] = []
        self.admissions: list[tuple[int, int]] = []  # (lines live before, lines admitted)
        self.steps = 0
        self.fail_on: str | None = None

    def parallelism(self, cfg: SearchConfig) -> tuple[int, int]:
        return 1, 1

    def stream(self, cfg: SearchConfig, max_input_len: int | None = None) -> ScriptedStream:
        return ScriptedStream(self, cfg)

    def translate(self, lines, cfg, batch_tokens=None, max_input_len=None):  # pragma: no cover - streams only
        raise AssertionError("a scripted engine is only used through streams")


def _batcher(engine: ScriptedEngine) -> Batcher:
    count = lambda lines: [3] * len(lines)  # noqa: E731
    return Batcher(engine, max_batch_tokens=4000, max_wait_ms=1, max_input_len=100, count_tokens=count, continuous=True)


def test_a_short_line_joins_a_running_search_and_leaves_before_the_long_one() -> None:
    engine = ScriptedEngine()
    batcher = _batcher(engine)
    finished: list[str] = []

    async def ask(line: str, delay: float) -> None:
        await asyncio.sleep(delay)
        (nbest,) = await batcher.translate([line], SearchConfig(beam=2))
        finished.append(nbest[0].text)

    async def main() -> None:
        await asyncio.gather(ask("200 long", 0.0), ask("3 short", 0.05))

    try:
        asyncio.run(main())
    finally:
        batcher.close()
    assert finished == ["out 3 short", "out 200 long"]
    # the short line joined while the long one was live: one search, two admissions
    assert engine.admissions == [(0, 1), (1, 1)]
    assert engine.steps == 200
    assert batcher.sentences == 2 and batcher.rounds == 2


def test_lines_of_a_request_come_back_in_order_and_requests_take_turns() -> None:
    engine = ScriptedEngine()
    batcher = _batcher(engine)

    async def main() -> list[list[str]]:
        big = batcher.translate([f"{n} line{n}" for n in (9, 2, 5, 1, 7)], SearchConfig(beam=2))
        small = batcher.translate(["4 alone"], SearchConfig(beam=2))
        answers = await asyncio.gather(big, small)
        return [[nbest[0].text for nbest in answer] for answer in answers]

    try:
        big, small = asyncio.run(main())
    finally:
        batcher.close()
    assert big == ["out 9 line9", "out 2 line2", "out 5 line5", "out 1 line1", "out 7 line7"]
    assert small == ["out 4 alone"]


def test_an_engine_error_fails_only_the_requests_in_that_search() -> None:
    engine = ScriptedEngine()
    engine.fail_on = "5 bad"
    batcher = _batcher(engine)

    async def main() -> tuple[BaseException | list, list]:
        bad = await asyncio.gather(batcher.translate(["5 bad"], SearchConfig(beam=2)), return_exceptions=True)
        good = await batcher.translate(["2 good"], SearchConfig(beam=2))
        return bad[0], good

    try:
        bad, good = asyncio.run(main())
        alive = [thread.is_alive() for thread in batcher._threads]
    finally:
        batcher.close()
    assert isinstance(bad, RuntimeError) and "broke" in str(bad)
    assert good[0][0].text == "out 2 good"
    assert alive == [True]  # the decoding thread went on after the error


def test_another_search_waits_until_the_running_one_drains_then_runs() -> None:
    engine = ScriptedEngine()
    batcher = _batcher(engine)
    order: list[str] = []

    async def ask(line: str, beam: int, delay: float) -> None:
        await asyncio.sleep(delay)
        await batcher.translate([line], SearchConfig(beam=beam))
        order.append(line)

    async def main() -> None:
        # beam 3 arrives while beam 2 runs; a later beam-2 line must not overtake it by joining the running search
        await asyncio.gather(ask("30 first", 2, 0.0), ask("2 other", 3, 0.02), ask("2 later", 2, 0.04))

    try:
        asyncio.run(main())
    finally:
        batcher.close()
    assert order == ["30 first", "2 other", "2 later"]


@pytest.mark.parametrize("lines", [["1 a"] * 40])
def test_many_requests_share_few_admissions(lines: list[str]) -> None:
    engine = ScriptedEngine()
    batcher = _batcher(engine)

    async def main() -> None:
        await asyncio.gather(*(batcher.translate([line], SearchConfig(beam=2)) for line in lines))

    try:
        asyncio.run(main())
    finally:
        batcher.close()
    assert batcher.sentences == 40
    assert len(engine.admissions) < 10, engine.admissions


class RoundEngine:
    """A `TranslatorLike` without streams (rounds only): each `translate` call takes ROUND_SECONDS and is recorded
    with its line count and the number of batches `length_batches` would make of it with the budget it was given."""

    engine = "rounds"
    ROUND_SECONDS = 0.5

    def __init__(self, workers: int = 1) -> None:
        self.config = Config()
        self.warnings: list[str] = []
        self.workers = workers
        self.calls: list[tuple[int, int]] = []  # (lines, batches)

    def parallelism(self, cfg: SearchConfig) -> tuple[int, int]:
        return self.workers, 1

    def stream(self, cfg: SearchConfig, max_input_len: int | None = None) -> None:
        return None

    def translate(self, lines, cfg, batch_tokens=None, max_input_len=None):
        lengths = [len(line.split()) for line in lines]
        self.calls.append((len(lines), len(list(length_batches(lengths, batch_tokens, cfg.rows_per_sentence)))))
        time.sleep(self.ROUND_SECONDS)
        return [[Translation(f"out {line}", -1.0, -1.0)] for line in lines]


def _round_batcher(engine: RoundEngine, max_batch_tokens: int = 4000) -> Batcher:
    count = lambda lines: [len(line.split()) for line in lines]  # noqa: E731
    return Batcher(engine, max_batch_tokens=max_batch_tokens, max_wait_ms=1, max_input_len=100, count_tokens=count)


def test_a_round_is_translated_as_one_batch_even_when_padding_would_split_it() -> None:
    # costs (words + 1) x beam 2: 6 + 6 + 22 = 34 within the budget of 40; padded to the longest, 3 x 22 = 66 is not.
    # The long line's cost is over a turn's quarter of the budget: it must still join (it once looped for ever)
    engine = RoundEngine()
    batcher = _round_batcher(engine, max_batch_tokens=40)
    lines = ["a b", "c d", "a long line of ten words to pad with"]

    async def main() -> list[list[list[Translation]]]:
        return await asyncio.gather(*(batcher.translate([line], SearchConfig(beam=2)) for line in lines))

    try:
        answers = asyncio.run(asyncio.wait_for(main(), 10))
    finally:
        batcher.close(timeout=1)
    assert [answer[0][0].text for answer in answers] == [f"out {line}" for line in lines]
    # one round of three lines, one batch: a split round would start a pool of workers beside the decoding threads
    assert engine.calls == [(3, 1)]


def test_a_round_waits_for_the_lines_of_the_clients_it_just_answered() -> None:
    """Four clients in a loop, each sending its next line 0, 4, 8 and 12 ms after its answer: every round holds all
    four (without the wait, the first returning line would start a round of its own and the rounds would split)."""
    engine = RoundEngine()
    batcher = _round_batcher(engine)

    async def client(i: int) -> None:
        for n in range(3):
            await batcher.translate([f"client {i} line {n}"], SearchConfig(beam=2))
            await asyncio.sleep(0.004 * i)

    async def main() -> None:
        await asyncio.gather(*(client(i) for i in range(4)))

    try:
        asyncio.run(main())
    finally:
        batcher.close()
    assert [lines for lines, _ in engine.calls] == [4, 4, 4]
    assert batcher.most_together == 4 and batcher.sentences == 12
