"""Learning-rate schedules: the exact rate of every update (warm-up, peak, decay) through a real optimizer.

The rate "at step s" is the one the (s+1)-th update uses: the trainer calls optimizer.step() then scheduler.step(),
so update s (0-based) runs with lr * SCHEDULES[name](s, warmup, max_steps). With AdamW on a parameter whose gradient
is always 1.0 (no weight decay), every Adam update moves the parameter by exactly its learning rate, so the test also
checks the rate the optimizer really applied, not just the number stored in its param group.
"""

from __future__ import annotations

import itertools
import math
import typing
from collections.abc import Callable

import pytest
import torch

from seqtool.config import TrainConfig
from seqtool.train.optim import SCHEDULES, build_scheduler

LR = 1e-3


def run_schedule(
    schedule: str,
    warmup: int,
    max_steps: int,
    updates: int,
    cooldown: float = 0.0,
    time_shares: Callable[[int], float] = lambda step: 0.0,
) -> tuple[list[float], list[float]]:
    """(the learning rate in the param group before each update, the distance each update moved the parameter).

    `time_shares(s)` is the share of the time budget spent when update s starts, as the trainer measures it then.
    """
    cfg = TrainConfig(schedule=schedule, warmup=warmup, max_steps=max_steps, lr=LR, cooldown=cooldown)
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    # built here, not with build_optimizer (whose signature is changing): the schedule is what is tested
    optimizer = torch.optim.AdamW([param], lr=LR, betas=(0.9, 0.98), eps=1e-12, weight_decay=0.0)
    clock = [0.0]
    scheduler = build_scheduler(optimizer, cfg, lambda: clock[0])
    rates, moves = [], []
    for step in range(updates):
        clock[0] = time_shares(step)
        rates.append(optimizer.param_groups[0]["lr"])
        before = param.detach().clone()
        param.grad = torch.ones_like(param)
        optimizer.step()
        scheduler.step()
        moves.append(float(before - param.detach()))
    return rates, moves


def test_the_config_offers_exactly_the_schedules_of_the_table() -> None:
    allowed = typing.get_args(typing.get_type_hints(TrainConfig)["schedule"])
    assert set(allowed) == set(SCHEDULES) == {"inverse_sqrt", "constant", "linear"}
    assert TrainConfig().schedule == "inverse_sqrt"


@pytest.mark.parametrize("schedule", ["inverse_sqrt", "constant", "linear"])
def test_linear_warmup_reaches_the_peak_at_step_warmup_minus_one(schedule: str) -> None:
    warmup = 8
    rates, moves = run_schedule(schedule, warmup, max_steps=40, updates=warmup)
    assert rates[0] == pytest.approx(LR / warmup, rel=1e-12)  # step 0: 1/warmup of the peak, never 0
    assert rates[3] == pytest.approx(LR * 4 / warmup, rel=1e-12)  # mid-warm-up: linear
    assert rates[warmup - 1] == pytest.approx(LR, rel=1e-12)  # the peak: train.lr
    assert all(a < b for a, b in itertools.pairwise(rates))  # strictly rising
    for step, (rate, move) in enumerate(zip(rates, moves, strict=True)):
        assert rate == pytest.approx(LR * (step + 1) / warmup, rel=1e-12)
        assert move == pytest.approx(rate, rel=1e-6), f"update {step} did not use the scheduled rate"


def test_inverse_sqrt_decays_as_one_over_sqrt_step_after_warmup() -> None:
    warmup = 4
    rates, moves = run_schedule("inverse_sqrt", warmup, max_steps=10_000, updates=60)
    assert max(rates) == pytest.approx(LR, rel=1e-12) and rates.index(max(rates)) == warmup - 1
    for step in range(warmup, 60):
        assert rates[step] == pytest.approx(LR * math.sqrt(warmup / (step + 1)), rel=1e-12), step
        assert moves[step] == pytest.approx(rates[step], rel=1e-6)
    assert rates[15] == pytest.approx(LR / 2, rel=1e-12)  # sqrt(4 / 16): half the peak at 4× the warm-up
    assert all(a > b for a, b in itertools.pairwise(rates[warmup - 1 :]))  # strictly falling


def test_inverse_sqrt_without_warmup_starts_at_the_peak() -> None:
    rates, _ = run_schedule("inverse_sqrt", 0, max_steps=100, updates=9)
    assert rates == pytest.approx([LR / math.sqrt(s + 1) for s in range(9)], rel=1e-12)


def test_constant_stays_at_the_peak_after_warmup() -> None:
    rates, moves = run_schedule("constant", 5, max_steps=30, updates=30)
    assert rates[4:] == pytest.approx([LR] * 26, rel=1e-12)
    assert moves[4:] == pytest.approx([LR] * 26, rel=1e-6)
    no_warmup, _ = run_schedule("constant", 0, max_steps=30, updates=3)
    assert no_warmup == pytest.approx([LR] * 3, rel=1e-12)


def test_linear_decays_to_zero_at_max_steps() -> None:
    warmup, max_steps = 4, 20
    rates, moves = run_schedule("linear", warmup, max_steps, updates=max_steps + 3)
    assert rates[warmup - 1] == pytest.approx(LR, rel=1e-12)
    for step in range(warmup, max_steps + 3):
        expected = LR * max(0.0, (max_steps - step) / (max_steps - warmup))
        assert rates[step] == pytest.approx(expected, rel=1e-12, abs=1e-18), step
    assert rates[12] == pytest.approx(LR / 2, rel=1e-12)  # half-way through the decay
    assert rates[max_steps - 1] == pytest.approx(LR / (max_steps - warmup), rel=1e-12)  # the last update's rate
    assert rates[max_steps] == 0.0 and rates[max_steps + 2] == 0.0  # 0 at max_steps, never negative
    assert moves[max_steps] == 0.0


def test_cooldown_falls_linearly_to_zero_over_the_last_share_of_max_steps() -> None:
    warmup, max_steps = 4, 40
    rates, moves = run_schedule("inverse_sqrt", warmup, max_steps, updates=max_steps + 2, cooldown=0.25)
    plain, _ = run_schedule("inverse_sqrt", warmup, max_steps, updates=max_steps + 2)
    assert rates[:31] == pytest.approx(plain[:31], rel=1e-12)  # untouched before the last quarter (step 30 on)
    for step in range(30, max_steps + 2):
        expected = LR * math.sqrt(warmup / (step + 1)) * max(0.0, (max_steps - step) / 10)
        assert rates[step] == pytest.approx(expected, rel=1e-12, abs=1e-18), step
        assert moves[step] == pytest.approx(expected, rel=1e-6, abs=1e-18), step
    assert rates[35] == pytest.approx(plain[35] / 2, rel=1e-12)  # half-way through the cool-down: half the rate
    assert rates[max_steps] == 0.0 and rates[max_steps + 1] == 0.0


def test_cooldown_follows_the_time_budget_when_it_runs_out_before_max_steps() -> None:
    """With max_minutes the run's progress is its share of the time; the rate of update s is set after update
    s - 1, from the share measured when that update started."""
    rates, _ = run_schedule(
        "constant", 0, max_steps=10_000, updates=22, cooldown=0.5, time_shares=lambda step: min(1.0, step / 20)
    )
    assert rates[0] == LR
    for step in range(1, 22):
        share = (step - 1) / 20
        assert rates[step] == pytest.approx(LR * min(1.0, (1 - min(1.0, share)) / 0.5), rel=1e-12, abs=1e-18), step
    assert rates[11] == LR and rates[16] == pytest.approx(LR * 0.5, rel=1e-12)  # 1 until half the time, then down
    assert rates[21] == 0.0  # the budget is spent: nothing left to learn with
    # the step count still ends the run when it comes first: the larger share wins
    by_steps, _ = run_schedule("constant", 0, 20, updates=21, cooldown=0.5, time_shares=lambda step: 0.1)
    assert by_steps[15] == pytest.approx(LR * 0.5, rel=1e-12) and by_steps[20] == 0.0


def test_the_schedule_resumes_from_its_state_dict() -> None:
    """A scheduler restored from a checkpoint's state continues exactly where the saved one was (--resume)."""
    cfg = TrainConfig(schedule="inverse_sqrt", warmup=4, max_steps=100, lr=LR)

    def fresh() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
        return optimizer, build_scheduler(optimizer, cfg)

    optimizer, scheduler = fresh()
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    saved = optimizer.state_dict(), scheduler.state_dict()  # the trainer restores both, in this order
    expected = [optimizer.param_groups[0]["lr"]]
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        expected.append(optimizer.param_groups[0]["lr"])
    optimizer2, scheduler2 = fresh()
    optimizer2.load_state_dict(saved[0])
    scheduler2.load_state_dict(saved[1])
    got = [optimizer2.param_groups[0]["lr"]]
    for _ in range(3):
        optimizer2.step()
        scheduler2.step()
        got.append(optimizer2.param_groups[0]["lr"])
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[0] == pytest.approx(LR * math.sqrt(4 / 8), rel=1e-12)  # step 7
