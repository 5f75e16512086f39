"""Corpus reading, filtering, token-budget batching with a resumable position, and the loss."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqtool.data.batching import BatchSampler, bucket_batches, make_batch
from seqtool.data.corpus import filter_pairs, read_lines, read_parallel
from seqtool.errors import DataError
from seqtool.tokenizer import SpecialIds
from seqtool.train.loss import label_smoothed_nll

SPECIALS = SpecialIds(pad=3, bos=1, eos=2, unk=0)


def test_read_lines_handles_bom_crlf_and_empty_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\n\r\nthree\n")
    assert read_lines(path) == ["one", "", "three"]


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok\nfine\nbad \xff here\n")
    with pytest.raises(DataError, match=r"bad.txt:3: invalid UTF-8"):
        read_lines(path)
    assert read_lines(path, "replace")[2] == "bad \ufffd here"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_lines(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="is a directory"):
        read_lines(tmp_path)


def test_line_count_mismatch_names_both_files_and_counts(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("a\nb\nc\n")
    (tmp_path / "t").write_text("a\nb\n")
    with pytest.raises(DataError) as err:
        read_parallel(tmp_path / "s", tmp_path / "t")
    assert "has 3 lines" in err.value.message and "has 2" in err.value.message
    assert str(tmp_path / "s") in err.value.message and str(tmp_path / "t") in err.value.message


def test_filter_reports_reasons() -> None:
    src = [[5], [], [5] * 10, [5, 6], [5] * 7]
    tgt = [[7], [7], [7], [], [7]]
    keep, report = filter_pairs(src, tgt, max_len=8, max_ratio=3.0)
    assert keep == [0]
    assert report.dropped == {"empty": 2, "too long": 1, "length ratio": 1}
    assert "kept 1 of 5 pairs" in report.summary()


def test_bucket_batches_respect_budget_and_cover_everything() -> None:
    rng = random.Random(0)
    src = [rng.randint(1, 40) for _ in range(500)]
    tgt = [rng.randint(1, 40) for _ in range(500)]
    batches = bucket_batches(src, tgt, 400, np.random.default_rng(1))
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        assert len(b) == 1 or len(b) * max(max(src[i], tgt[i]) + 1 for i in b) <= 400
    # maximal: the batches come in sorted order, and adding the next pair to a batch would break the budget
    for batch, following in itertools.pairwise(batches):
        nxt = int(following[0])
        assert (len(batch) + 1) * (max(src[nxt], tgt[nxt]) + 1) > 400


@pytest.mark.parametrize("longest", [40, 70_000])  # the packed sort key, and the lexsort for absurd lengths
def test_pairs_are_ordered_by_longer_side_then_source_then_at_random(longest: int) -> None:
    rng = random.Random(0)
    src = np.array([rng.randint(1, 40) for _ in range(2000)] + [longest], dtype=np.int32)
    tgt = np.array([rng.randint(1, 40) for _ in range(2000)] + [3], dtype=np.int32)
    orders = [np.concatenate(bucket_batches(src, tgt, 10**9, np.random.default_rng(seed))) for seed in (1, 2)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(len(src)))
        keys = list(zip(np.maximum(src, tgt)[order].tolist(), src[order].tolist(), strict=True))
        assert keys == sorted(keys)
    assert orders[0].tolist() != orders[1].tolist()  # ties are broken by the random generator
    unshuffled = np.concatenate(bucket_batches(src, tgt, 10**9))
    assert unshuffled.tolist() == np.lexsort((src, np.maximum(src, tgt))).tolist()


def test_sampler_resumes_exactly() -> None:
    rng = random.Random(0)
    src = [rng.randint(1, 30) for _ in range(300)]
    tgt = [rng.randint(1, 30) for _ in range(300)]
    full = BatchSampler(src, tgt, 200, seed=5)
    stream = iter(full)
    expected = [next(stream).tolist() for _ in range(200)]  # spans several epochs
    first = BatchSampler(src, tgt, 200, seed=5)
    it = iter(first)
    head = [next(it).tolist() for _ in range(77)]
    resumed = BatchSampler(src, tgt, 200, seed=5)
    resumed.load_state_dict(first.state_dict())
    it2 = iter(resumed)
    assert head + [next(it2).tolist() for _ in range(123)] == expected
    assert 0.0 <= full.padding_fraction() < 0.5


def test_make_batch_layout() -> None:
    batch = make_batch([[10, 11], [12]], [[20], [21, 22, 23]], SPECIALS)
    assert batch.src.tolist() == [[10, 11, 2], [12, 2, 3]]
    assert batch.tgt_in.tolist() == [[1, 20, 3, 3], [1, 21, 22, 23]]
    assert batch.tgt_out.tolist() == [[20, 2, 3, 3], [21, 22, 23, 2]]
    assert batch.tgt_tokens == 6
    tagged = make_batch([[10, 11], [12]], [[20], [21, 22, 23]], SPECIALS, src_tag=7)
    assert tagged.src.tolist() == [[7, 10, 11, 2], [7, 12, 2, 3]] and tagged.tgt_in.tolist() == batch.tgt_in.tolist()
    tagged = make_batch([[10, 11], [12]], [[20], [21, 22, 23]], SPECIALS, tgt_tag=8)  # the tag is the first target
    assert tagged.src.tolist() == batch.src.tolist()
    assert tagged.tgt_in.tolist() == [[1, 8, 20, 3, 3], [1, 8, 21, 22, 23]]
    assert tagged.tgt_out.tolist() == [[8, 20, 2, 3, 3], [8, 21, 22, 23, 2]]
    assert tagged.tgt_tokens == 8


def test_loss_matches_torch_cross_entropy_without_smoothing() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 9)
    target = torch.tensor([[4, 5, 2, 3], [6, 7, 8, 2]])
    loss, nll = label_smoothed_nll(logits, target, pad=3, smoothing=0.0)
    ref = F.cross_entropy(logits.view(-1, 9), target.view(-1), ignore_index=3, reduction="sum")
    assert torch.allclose(loss, ref) and torch.allclose(nll, ref)


def test_label_smoothing_is_a_proper_distribution() -> None:
    torch.manual_seed(0)
    vocab, pad, eps = 9, 3, 0.2
    logits = torch.randn(1, 3, vocab)
    target = torch.tensor([[4, 5, 2]])
    loss, _ = label_smoothed_nll(logits, target, pad=pad, smoothing=eps)
    # reference: explicit target distribution, 1 - eps on the gold id, eps spread over the other non-pad ids
    q = torch.full((1, 3, vocab), eps / (vocab - 2))
    q[..., pad] = 0.0
    q.scatter_(-1, target.unsqueeze(-1), 1.0 - eps)
    assert torch.allclose(q.sum(-1), torch.ones(1, 3))
    ref = -(q * F.log_softmax(logits, -1)).sum()
    assert torch.allclose(loss, ref, atol=1e-5)
