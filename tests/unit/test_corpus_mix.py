"""CorpusMix: batches from several corpora in proportion to their weights, deterministic and exactly resumable."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from seqtool.data.batching import BatchSampler, CorpusMix


def sampler(pairs: int, seed: int, max_len: int = 20) -> BatchSampler:
    rng = np.random.default_rng(seed)
    return BatchSampler(rng.integers(1, max_len, pairs), rng.integers(1, max_len, pairs), 200, seed)


def mix(weights: list[float]) -> CorpusMix:
    # corpora of very different sizes and lengths: the shares must follow the weights, not the sizes
    return CorpusMix([sampler(5000, 1), sampler(300, 2, 40), sampler(500, 3, 5)], weights)


@pytest.mark.parametrize("weights", [[1, 1, 1], [3, 1, 1], [10, 1, 0.5], [0.2, 0.3, 0.5]])
def test_share_of_batches_follows_the_weights(weights: list[float]) -> None:
    """Stride scheduling: after any n batches each corpus has given n × weight / total, within 2 batches for three
    corpora (measured over random weights: at most 1.86)."""
    draws = [k for k, _ in islice(iter(mix(weights)), 3000)]
    total = sum(weights)
    for n in range(1, 3001):
        for k, w in enumerate(weights):
            assert abs(draws[:n].count(k) - n * w / total) <= 2.0, (n, k, weights)


def test_two_corpora_are_within_one_batch_of_their_share() -> None:
    m = CorpusMix([sampler(100, 1), sampler(100, 2)], [3, 1])
    draws = [k for k, _ in islice(iter(m), 400)]
    assert draws[:8] == [0, 0, 0, 1, 0, 0, 0, 1]
    assert all(abs(draws[:n].count(1) - n / 4) < 1 for n in range(1, 401))


def test_share_of_tokens_follows_the_weights_within_5_percent() -> None:
    """Each batch fills the same token budget, so the shares of padded tokens follow the weights too (the budget is
    rows × longest side: the real tokens depend on each corpus's padding, which logs report)."""
    m = mix([3, 1, 1])
    tokens = [0, 0, 0]
    for k, batch in islice(iter(m), 5000):
        s = m.samplers[k]
        tokens[k] += len(batch) * int(np.maximum(s.src_lens[batch], s.tgt_lens[batch]).max() + 1)
    shares = [t / sum(tokens) for t in tokens]
    assert shares == pytest.approx([0.6, 0.2, 0.2], abs=0.05)


def test_each_batch_comes_from_one_corpus_and_follows_its_own_sampler() -> None:
    m = mix([2, 1, 1])
    alone = [iter(sampler(5000, 1)), iter(sampler(300, 2, 40)), iter(sampler(500, 3, 5))]
    for k, batch in islice(iter(m), 500):  # the smallest corpus goes through many epochs
        assert np.array_equal(batch, next(alone[k]))


def test_resume_continues_the_same_sequence() -> None:
    m = mix([3, 1, 0.5])
    stream = iter(m)
    list(islice(stream, 777))
    state = m.state_dict()
    expected = list(islice(stream, 300))
    again = mix([3, 1, 0.5])
    again.load_state_dict(state)
    got = list(islice(iter(again), 300))
    assert [k for k, _ in got] == [k for k, _ in expected]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, expected, strict=True))


def test_one_corpus_is_its_sampler_and_reads_a_single_samplers_position() -> None:
    """A run of one corpus draws what BatchSampler alone draws, and resumes from a checkpoint written before mixing."""
    old = sampler(5000, 1)
    stream = iter(old)
    list(islice(stream, 123))
    m = CorpusMix([sampler(5000, 1)], [1.0])
    m.load_state_dict(old.state_dict())
    assert all(np.array_equal(b, next(stream)) for _, b in islice(iter(m), 50))


def test_bad_weights_and_positions_are_refused() -> None:
    with pytest.raises(ValueError, match="weights must be > 0"):
        CorpusMix([sampler(10, 1), sampler(10, 2)], [1, 0])
    with pytest.raises(ValueError, match="2 corpora, this run 3"):
        mix([1, 1, 1]).load_state_dict(CorpusMix([sampler(10, 1), sampler(10, 2)], [1, 1]).state_dict())
