"""Greedy and beam search against tiny models that implement the Seq2SeqModel interface."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from seqtool.decode.search import (
    LENGTH_PENALTIES,
    Hypothesis,
    SearchConfig,
    beam_search,
    greedy_search,
    score_sequence,
    search,
)
from seqtool.models.base import DecoderState, EncoderOutput, Seq2SeqModel
from seqtool.tokenizer import SpecialIds

SP = SpecialIds(pad=0, bos=1, eos=2, unk=3)
A, B, C = 4, 5, 6


class MarkovModel(Seq2SeqModel):
    """Next-token logits depend only on the previous token, through a fixed (V, V) table.

    The state carries the source so that batch handling (expansion, reordering, dropping rows) is exercised;
    `step` checks that the state rows still match the tokens it is fed.
    """

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.specials = SP
        self.register_buffer("table", table.float())
        self.batch_sizes: list[int] = []

    def features(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        raise NotImplementedError  # forward is overridden: the table holds the logits

    def forward(self, src: Tensor, tgt_in: Tensor, keep: Tensor | None = None) -> Tensor:
        return self.table[tgt_in]

    def encode(self, src: Tensor) -> EncoderOutput:
        return EncoderOutput(memory=src.float().unsqueeze(-1), src_mask=src != SP.pad)

    def init_state(self, enc: EncoderOutput) -> DecoderState:
        return {"memory": enc.memory, "src_mask": enc.src_mask}

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        assert state["memory"].size(0) == tokens.size(0)
        self.batch_sizes.append(tokens.size(0))
        return self.table[tokens], state


class TinyGRU(Seq2SeqModel):
    """A random GRU decoder conditioned on the masked mean of the source embeddings."""

    def __init__(self, vocab: int = 12, dim: int = 16, seed: int = 0, eos_bias: float = 0.0) -> None:
        super().__init__()
        self.specials = SP
        torch.manual_seed(seed)
        self.src_emb = nn.Embedding(vocab, dim)
        self.tgt_emb = nn.Embedding(vocab, dim)
        self.cell = nn.GRUCell(dim, dim)
        self.init = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, vocab)
        with torch.no_grad():
            self.output.weight.mul_(4.0)  # peakier distributions: varied lengths, fewer near-ties
            self.output.bias[SP.eos] += eos_bias
        self.batch_sizes: list[int] = []
        self.eval()

    def encode(self, src: Tensor) -> EncoderOutput:
        return EncoderOutput(memory=self.src_emb(src), src_mask=src != SP.pad)

    def init_state(self, enc: EncoderOutput) -> DecoderState:
        mask = enc.src_mask.unsqueeze(-1).float()
        ctx = (enc.memory * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return {"h": torch.tanh(self.init(ctx)), "ctx": ctx}

    def _cell(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        h = self.cell(self.tgt_emb(tokens) + state["ctx"], state["h"])
        return self.output(h), {"h": h, "ctx": state["ctx"]}

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        self.batch_sizes.append(tokens.size(0))
        return self._cell(tokens, state)

    def features(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        state = self.init_state(self.encode(src))
        hiddens = []
        for t in range(tgt_in.size(1)):
            state = {"h": self.cell(self.tgt_emb(tgt_in[:, t]) + state["ctx"], state["h"]), "ctx": state["ctx"]}
            hiddens.append(state["h"])
        return torch.stack(hiddens, 1)


def markov_table(vocab: int, rows: dict[int, dict[int, float]]) -> Tensor:
    """Log-prob table: the given probabilities per row, the rest of the mass spread over the other tokens."""
    table = torch.empty(vocab, vocab)
    for prev in range(vocab):
        given = rows.get(prev, {})
        rest = (1.0 - sum(given.values())) / (vocab - len(given))
        table[prev] = torch.tensor([given.get(tok, rest) for tok in range(vocab)]).log()
    return table


def random_sources(lengths: list[int], vocab: int = 12, seed: int = 1) -> Tensor:
    """A padded batch of random sources (ids >= 4) of the given lengths, each ending with </s>."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), SP.pad)
    for i, n in enumerate(lengths):
        src[i, : n - 1] = torch.randint(4, vocab, (n - 1,), generator=gen)
        src[i, n - 1] = SP.eos
    return src


def pad_targets(hyps: list[Hypothesis]) -> Tensor:
    width = max(1, max(len(h.tokens) for h in hyps))
    return torch.tensor([h.tokens + [SP.pad] * (width - len(h.tokens)) for h in hyps])


def assert_log_probs_match(model: Seq2SeqModel, src: Tensor, results: list[list[Hypothesis]]) -> None:
    """Every hypothesis's log_prob equals the teacher-forced log-prob of its tokens + </s>."""
    rows = [i for i, hyps in enumerate(results) for _ in hyps]
    hyps = [h for hs in results for h in hs]
    expected = score_sequence(model, src[rows], pad_targets(hyps))
    got = torch.tensor([h.log_prob for h in hyps])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


LENGTHS = [3, 7, 1, 5, 9, 2, 6]
NO_LP = dict(length_penalty=0.0, max_len_a=1.0, max_len_b=4)


@pytest.fixture(scope="module")
def gru() -> TinyGRU:
    return TinyGRU()


@pytest.fixture(scope="module")
def src() -> Tensor:
    return random_sources(LENGTHS)


def greedy_suboptimal_model() -> MarkovModel:
    # A is slightly likelier than B at first, but everything after A is bad while B is followed by </s>
    rows = {SP.bos: {A: 0.50, B: 0.45}, A: {SP.eos: 0.20}, B: {SP.eos: 0.95}}
    return MarkovModel(markov_table(8, rows))


def never_eos_model() -> MarkovModel:
    table = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    table[:, SP.eos] = -30.0
    return MarkovModel(table)


def test_length_penalties() -> None:
    length = torch.tensor([1.0, 7.0])
    torch.testing.assert_close(LENGTH_PENALTIES["gnmt"](length, 1.0), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(LENGTH_PENALTIES["gnmt"](length, 0.0), torch.ones(2))
    torch.testing.assert_close(LENGTH_PENALTIES["avg"](length, 1.0), length)
    torch.testing.assert_close(LENGTH_PENALTIES["none"](length, 3.0), torch.ones(2))


def test_beam1_equals_greedy(gru: TinyGRU, src: Tensor) -> None:
    greedy = greedy_search(gru, src, 1.0, 4)
    beam = beam_search(gru, src, SearchConfig(beam=1, **NO_LP))
    assert len({len(hs[0].tokens) for hs in greedy}) > 2, "the test model should give varied lengths"
    for g, b in zip(greedy, beam, strict=True):
        assert len(g) == len(b) == 1
        assert g[0].tokens == b[0].tokens
        assert g[0].log_prob == pytest.approx(b[0].log_prob, abs=1e-6)
        assert g[0].score == pytest.approx(b[0].score, abs=1e-6)  # beam search ranks by its own score (alpha 0)
    assert_log_probs_match(gru, src, greedy)  # the log-probs of the tokens chosen, not of some other sequence
    assert search(gru, src, SearchConfig(beam=1, nbest=1, **NO_LP)) == greedy


def test_beam_at_least_greedy(gru: TinyGRU, src: Tensor) -> None:
    greedy = greedy_search(gru, src, 1.0, 4)
    beam = beam_search(gru, src, SearchConfig(beam=4, **NO_LP))
    for g, b in zip(greedy, beam, strict=True):
        assert b[0].log_prob >= g[0].log_prob - 1e-5
        assert b[0].score == b[0].log_prob  # alpha 0: no normalisation
    assert any(b[0].log_prob > g[0].log_prob + 1e-4 for g, b in zip(greedy, beam, strict=True)), (
        "beam should win somewhere"
    )


def test_beam_beats_greedy_on_markov_trap() -> None:
    model = greedy_suboptimal_model()
    src = random_sources([4, 2, 6], vocab=8)
    greedy = greedy_search(model, src, 1.0, 4)
    beam = beam_search(model, src, SearchConfig(beam=4, **NO_LP))
    for g, b in zip(greedy, beam, strict=True):
        assert g[0].tokens == [A] and g[0].log_prob == pytest.approx(math.log(0.5 * 0.2), abs=1e-5)
        assert b[0].tokens == [B] and b[0].log_prob == pytest.approx(math.log(0.45 * 0.95), abs=1e-5)
        assert b[0].log_prob > g[0].log_prob


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_reported_log_probs_match_teacher_forcing(gru: TinyGRU, src: Tensor, alpha: float) -> None:
    cfg = SearchConfig(beam=4, nbest=4, length_penalty=alpha, max_len_a=1.0, max_len_b=4)
    beam = beam_search(gru, src, cfg)
    assert_log_probs_match(gru, src, beam)
    assert_log_probs_match(gru, src, greedy_search(gru, src, 1.0, 4))
    for h in itertools.chain.from_iterable(beam):
        assert h.score == pytest.approx(h.log_prob / ((5 + len(h.tokens) + 1) / 6) ** alpha, rel=1e-5)


@pytest.mark.parametrize("beam", [1, 3])
def test_batch_invariance(gru: TinyGRU, src: Tensor, beam: int) -> None:
    cfg = SearchConfig(beam=beam, nbest=beam, length_penalty=1.0, max_len_a=1.0, max_len_b=4)
    batched = search(gru, src, cfg)
    for i, n in enumerate(LENGTHS):
        alone = search(gru, src[i : i + 1, :n], cfg)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        for h1, h2 in zip(alone, batched[i], strict=True):
            assert h1.log_prob == pytest.approx(h2.log_prob, abs=1e-5)
            assert h1.score == pytest.approx(h2.score, abs=1e-5)


@pytest.mark.parametrize("beam", [1, 3])
def test_max_length_is_respected(beam: int) -> None:
    model = never_eos_model()
    src = random_sources([1, 4, 7, 2], vocab=8)
    cfg = SearchConfig(beam=beam, nbest=beam, max_len_a=0.5, max_len_b=2)
    results = search(model, src, cfg)
    for n, hyps in zip([1, 4, 7, 2], results, strict=True):
        assert len(hyps) == beam
        assert all(len(h.tokens) == math.floor(0.5 * n + 2) for h in hyps)
    assert len(model.batch_sizes) == math.floor(0.5 * 7 + 2) + 1  # the last step forces </s>
    assert_log_probs_match(model, src, results)


def test_nbest_distinct_and_sorted(gru: TinyGRU, src: Tensor) -> None:
    results = beam_search(gru, src, SearchConfig(beam=4, nbest=4, length_penalty=1.0, max_len_a=1.0, max_len_b=4))
    for hyps in results:
        assert len(hyps) == 4
        assert len({tuple(h.tokens) for h in hyps}) == 4
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("beam", [1, 4])
def test_pad_and_bos_never_emitted(beam: int) -> None:
    table = torch.zeros(8, 8)
    table[:, SP.pad] = table[:, SP.bos] = 10.0  # the model would love to emit them
    table[SP.bos, A] = table[A, SP.eos] = 5.0
    model = MarkovModel(table)
    src = random_sources([3, 5], vocab=8)
    results = search(model, src, SearchConfig(beam=beam, nbest=beam, max_len_a=1.0, max_len_b=3))
    tokens = [tok for hyps in results for h in hyps for tok in h.tokens]
    assert tokens and SP.pad not in tokens and SP.bos not in tokens
    assert_log_probs_match(model, src, results)


@pytest.mark.parametrize("beam", [1, 3])
def test_finished_sentences_leave_the_batch(beam: int) -> None:
    model = never_eos_model()
    src = random_sources([1, 2, 3], vocab=8)  # a=1, b=0: max lengths 1, 2, 3
    search(model, src, SearchConfig(beam=beam, nbest=1, max_len_a=1.0, max_len_b=0))
    assert model.batch_sizes == [3 * beam, 3 * beam, 2 * beam, beam]


@pytest.mark.parametrize("beam", [1, 4])
def test_natural_finish_shrinks_the_batch(gru: TinyGRU, src: Tensor, beam: int) -> None:
    gru.batch_sizes.clear()
    search(gru, src, SearchConfig(beam=beam, nbest=1, max_len_a=1.0, max_len_b=4))
    sizes = gru.batch_sizes
    assert sizes[0] == len(LENGTHS) * beam
    assert all(a >= b for a, b in itertools.pairwise(sizes)) and sizes[-1] < sizes[0]


def test_early_stop_before_max_length() -> None:
    model = greedy_suboptimal_model()
    search(
        model, random_sources([5, 5], vocab=8), SearchConfig(beam=2, length_penalty=0.0, max_len_a=10.0, max_len_b=50)
    )
    assert len(model.batch_sizes) < 5  # max length is 100; B </s> is found at step 2


def test_length_penalty_keeps_searching_past_finished() -> None:
    # [] scores log 0.55 = -0.60; [A, C] has log-prob -0.80 but, normalised by ((5+3)/6)^2, scores -0.45
    rows = {SP.bos: {SP.eos: 0.55, A: 0.45 - 1e-6}, A: {C: 0.999}, C: {SP.eos: 0.999}}
    model = MarkovModel(markov_table(8, rows))
    src = random_sources([3], vocab=8)
    cfg = SearchConfig(beam=1, nbest=1, length_penalty=2.0, max_len_a=1.0, max_len_b=10)
    assert greedy_search(model, src, 1.0, 10)[0][0].tokens == []
    (best,) = beam_search(model, src, cfg)[0]
    assert best.tokens == [A, C]
    assert best.score == pytest.approx(best.log_prob / (8 / 6) ** 2)
    assert beam_search(model, src, SearchConfig(beam=1, length_penalty=0.0))[0][0].tokens == []


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wide_beam_is_exhaustive(alpha: float) -> None:
    # vocab 6 (real tokens unk, 4, 5), max length 2: 13 sequences; beam 12 keeps every candidate alive
    model = TinyGRU(vocab=6, seed=3)
    src = random_sources([4], vocab=6)
    cfg = SearchConfig(beam=12, nbest=12, length_penalty=alpha, max_len_a=0.0, max_len_b=2)
    results = beam_search(model, src, cfg)[0]
    seqs = [list(s) for n in range(3) for s in itertools.product([3, 4, 5], repeat=n)]
    log_probs = score_sequence(model, src.expand(len(seqs), -1), pad_targets([Hypothesis(s, 0.0, 0.0) for s in seqs]))
    scores = [lp / ((5 + len(s) + 1) / 6) ** alpha for s, lp in zip(seqs, log_probs.tolist(), strict=True)]
    ranked = sorted(range(len(seqs)), key=lambda i: -scores[i])[:12]
    assert [h.tokens for h in results] == [seqs[i] for i in ranked]
    assert [h.score for h in results] == pytest.approx([scores[i] for i in ranked], abs=1e-5)


def test_heuristic_stop_ends_sooner_than_exact() -> None:
    # [] scores log 0.6 = -0.51 and [A] log 0.2 / lp(2) = -1.38; the live [A, A, A] has log-prob log 0.1 = -2.30:
    # ended now it would score -2.30 / lp(4) = -1.54, so the heuristic stops at step 3, but the exact rule divides by
    # lp(31) = 6 (the maximum length) and goes on until log 0.4 + t log 0.5 <= 6 * -1.38, at step 12
    rows = {SP.bos: {SP.eos: 0.6, A: 0.4 - 1e-6}, A: {A: 0.5, SP.eos: 0.5 - 1e-6}}
    steps = {}
    for stop in ("heuristic", "exact"):
        model = MarkovModel(markov_table(8, rows))
        cfg = SearchConfig(beam=2, nbest=1, length_penalty=1.0, max_len_a=0.0, max_len_b=30, stop=stop)
        (best,) = beam_search(model, random_sources([3], vocab=8), cfg)[0]
        assert best.tokens == []
        steps[stop] = len(model.batch_sizes)
    assert steps == {"heuristic": 3, "exact": 12}


def test_bad_config_is_rejected(gru: TinyGRU, src: Tensor) -> None:
    from seqtool.errors import ConfigError

    with pytest.raises(ConfigError):
        beam_search(gru, src, SearchConfig(beam=2, nbest=3))
    with pytest.raises(ConfigError):
        beam_search(gru, src, SearchConfig(beam=2, length_penalty_kind="nope"))
    with pytest.raises(ConfigError):
        beam_search(gru, src, SearchConfig(beam=2, stop="never"))
