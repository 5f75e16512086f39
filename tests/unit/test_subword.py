"""Subword regularisation: sampled segmentations (their distribution, reproducibility), the sampled corpus caches, the
sampler's epochs over the copies, and word dropout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

from seqtool.config import Config, TokenizerConfig, config_from_dict
from seqtool.data import dataset
from seqtool.data.batching import BatchSampler
from seqtool.data.dataset import open_or_build
from seqtool.data.subword import SubwordSampling, piece_scores, sample_segmentations
from seqtool.errors import ConfigError, DataError
from seqtool.tokenizer import TokenizerSpec, train_sentencepiece
from seqtool.train.word_dropout import drop_words

SENTENCE = "Open the selected files in a new window"


@pytest.fixture(scope="module")
def models(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("spm")
    inputs = [tiny_corpus["train.en"], tiny_corpus["train.de"]]
    return {
        kind: train_sentencepiece(inputs, root / kind, TokenizerSpec(vocab_size=300, model_type=kind))
        for kind in ("unigram", "bpe")
    }


@pytest.fixture(scope="module")
def unigram(models: dict[str, Path]) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(models["unigram"]))


def test_samples_follow_p_to_the_alpha_over_the_n_best(unigram: spm.SentencePieceProcessor) -> None:
    """20,000 draws for one sentence: each of its 4 best segmentations as often as P^alpha / sum says (chi-square)."""
    scores, alpha, nbest, draws = piece_scores(unigram), 0.5, 4, 20_000
    candidates = unigram.nbest_encode(SENTENCE, out_type=int, nbest_size=nbest)
    logp = np.array([sum(unigram.get_score(i) for i in c) for c in candidates])
    expected = np.exp(alpha * (logp - logp.max()))
    expected = expected / expected.sum() * draws
    rng = np.random.default_rng(0)
    drawn = sample_segmentations(unigram, [SENTENCE] * draws, scores, alpha, nbest, rng)
    counts = np.array([sum(d == list(c) for d in drawn) for c in candidates])
    assert counts.sum() == draws and (counts > 0).all()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.3, (counts, expected)  # p = 0.001 with 3 degrees of freedom
    assert logp[0] == logp.max()  # SentencePiece's first is the best: the sum of piece scores ranks as it does


def test_samples_are_lossless_reproducible_and_sharpen_with_alpha(unigram: spm.SentencePieceProcessor) -> None:
    lines = [SENTENCE, "", "Save the document as PDF", "x"]
    scores = piece_scores(unigram)
    first = sample_segmentations(unigram, lines, scores, 0.1, 16, np.random.default_rng([42, 0]))
    again = sample_segmentations(unigram, lines, scores, 0.1, 16, np.random.default_rng([42, 0]))
    other = sample_segmentations(unigram, lines * 20, scores, 0.1, 16, np.random.default_rng([42, 1]))
    assert first == again and first[1] == []
    assert unigram.decode(first) == lines and unigram.decode(other) == lines * 20
    best = unigram.encode(lines, out_type=int)
    assert any(seg != best[k % len(lines)] for k, seg in enumerate(other))  # near uniform: rarely the best
    sharp = sample_segmentations(unigram, lines * 20, scores, 50.0, 16, np.random.default_rng(1))
    assert sharp == best * 20  # large alpha: the best segmentation


def build(cache: Path, files: tuple[Path, Path], model: Path, **kw: object) -> dataset.EncodedCorpus:
    corpus, _, _ = open_or_build(cache, *files, model, None, max_len=1000, max_ratio=0.0, **kw)  # type: ignore[arg-type]
    return corpus


def test_sampled_caches_are_deterministic_per_copy_and_decode_to_the_text(
    tiny_corpus: dict[str, Path], models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataset, "CHUNK_PAIRS", 64)  # several chunks: seeds per chunk, spread over the workers
    files = (tiny_corpus["train.en"], tiny_corpus["train.de"])
    model = models["unigram"]
    best = build(tmp_path / "c", files, model, workers=1)
    copies = [build(tmp_path / "c", files, model, workers=1, sampling=SubwordSampling(0.2, 8, 42, k)) for k in (0, 1)]
    by_two = build(tmp_path / "two", files, model, workers=2, sampling=SubwordSampling(0.2, 8, 42, 1))
    for name in ("src.ids", "src.offsets", "tgt.ids", "tgt.offsets"):
        assert (by_two.directory / name).read_bytes() == (copies[1].directory / name).read_bytes(), name
    assert len({best.directory, *(c.directory for c in copies)}) == 3  # three caches side by side
    processor = spm.SentencePieceProcessor(model_file=str(model))
    texts = [processor.decode(best.tgt(i).tolist()) for i in range(len(best))]
    for corpus in copies:
        assert len(corpus) == len(best) > 500  # no length filter here: the same pairs kept
        assert [processor.decode(corpus.tgt(i).tolist()) for i in range(len(corpus))] == texts
    assert copies[0].tgt_lengths.sum() > best.tgt_lengths.sum()  # sampled: more, shorter pieces
    assert copies[0].tgt_lengths.tolist() != copies[1].tgt_lengths.tolist()
    again = open_or_build(tmp_path / "c", *files, model, None, 1000, 0.0, sampling=SubwordSampling(0.2, 8, 42, 1))
    assert not again[2] and again[0].directory == copies[1].directory  # reused, not rebuilt


def test_sampling_a_bpe_model_is_a_clear_error(
    tiny_corpus: dict[str, Path], models: dict[str, Path], tmp_path: Path
) -> None:
    files = (tiny_corpus["train.en"], tiny_corpus["train.de"])
    with pytest.raises(DataError, match="needs a unigram"):
        build(tmp_path / "c", files, models["bpe"], sampling=SubwordSampling(0.2, 8, 42, 0))
    raw = {"tokenizer": {"type": "bpe"}, "data": {"subword_alpha": 0.2}}
    with pytest.raises(ConfigError, match=r"data\.subword_alpha.*unigram"):
        config_from_dict(raw)
    assert Config().data.subword_alpha == 0.0 and TokenizerConfig().type == "unigram"


def test_the_sampler_batches_epoch_e_from_copy_e_mod_n_and_resumes() -> None:
    rng = np.random.default_rng(0)
    lengths = [(rng.integers(1, 30, 500), rng.integers(1, 30, 500)) for _ in range(3)]
    lengths[2] = (lengths[2][0] + 40, lengths[2][1] + 40)  # copy 2: much longer pieces, so more batches
    sampler = BatchSampler(*lengths[0], 600, seed=3, copies=lengths[1:])
    stream = sampler.with_copy()
    seen: dict[int, int] = {}
    for _ in range(400):
        copy, batch = next(stream)
        assert copy == sampler.epoch % 3
        src, tgt = lengths[copy]
        rows = len(batch)
        assert rows == 1 or rows * max(src[batch].max(), tgt[batch].max()) <= 600  # that copy's lengths
        seen[sampler.epoch] = copy
    assert set(seen.values()) == {0, 1, 2} and sampler.epoch >= 3
    state = sampler.state_dict()
    ahead = [(c, b.tolist()) for c, b in (next(stream) for _ in range(50))]
    resumed = BatchSampler(*lengths[0], 600, seed=3, copies=lengths[1:])
    resumed.load_state_dict(state)
    stream2 = resumed.with_copy()
    assert [(c, b.tolist()) for c, b in (next(stream2) for _ in range(50))] == ahead


def test_word_dropout_replaces_the_share_asked_for_and_never_a_protected_id() -> None:
    torch.manual_seed(0)
    ids = torch.randint(4, 300, (64, 50))
    ids[:, 0], ids[:, -1], ids[::2, -10:] = 2, 3, 0  # <s>, </s>, padding
    protected = torch.tensor([0, 2, 3])
    out = drop_words(ids, 0.3, 1, protected)
    droppable = ~torch.isin(ids, protected)
    replaced = out != ids
    assert bool((out[replaced] == 1).all()) and not bool(replaced[~droppable].any())
    share = replaced.sum().item() / droppable.sum().item()
    n = droppable.sum().item()
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n), share
    assert drop_words(ids, 0.0, 1, protected) is ids
    torch.manual_seed(0)
    ids_again = torch.randint(4, 300, (64, 50))
    ids_again[:, 0], ids_again[:, -1], ids_again[::2, -10:] = 2, 3, 0
    assert torch.equal(drop_words(ids_again, 0.3, 1, protected), out)  # from torch's seeded generator
