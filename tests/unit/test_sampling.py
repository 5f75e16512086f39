"""Sampling: the empirical distribution, top-k/top-p cuts, temperature 0, and independence from batching."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from seqtool.data.batching import pad_sequences
from seqtool.decode.sampling import sampling_logits, uniform_noise
from seqtool.decode.search import SearchConfig, greedy_search, search
from seqtool.decode.translate import translate_ids
from seqtool.errors import ConfigError
from seqtool.models.base import DecoderState, EncoderOutput, Seq2SeqModel
from seqtool.models.transformer import Transformer
from seqtool.tokenizer import SpecialIds

SP = SpecialIds(pad=0, bos=1, eos=2, unk=3)
# the first target token's probabilities over tokens 2..6 (</s>, then four words); pad and bos are never drawn
FIRST = torch.tensor([0.05, 0.4, 0.3, 0.15, 0.1])


class FirstTokenModel(Seq2SeqModel):
    """A model whose first token has the probabilities FIRST (over ids 2..6) and whose second is always </s>."""

    def __init__(self) -> None:
        super().__init__()
        self.specials = SP

    def features(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        raise NotImplementedError

    def encode(self, src: Tensor) -> EncoderOutput:
        return EncoderOutput(memory=src.float().unsqueeze(-1), src_mask=src != SP.pad)

    def init_state(self, enc: EncoderOutput) -> DecoderState:
        return {"memory": enc.memory, "t": 0}

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        logits = torch.full((tokens.size(0), 7), -30.0)
        if state["t"] == 0:
            logits[:, 2:] = FIRST.log()
        else:
            logits[:, SP.eos] = 0.0
        return logits, {**state, "t": state["t"] + 1}


def _first_tokens(cfg: SearchConfig, lines: int) -> Tensor:
    src = torch.full((lines, 2), 5)
    hyps = search(FirstTokenModel(), src, cfg, range(lines))
    return torch.tensor([h.tokens[0] if h.tokens else SP.eos for nbest in hyps for h in nbest])


def test_the_samples_follow_the_model_distribution() -> None:
    """20,000 draws against FIRST: chi-square with 4 degrees of freedom below its 0.1 % critical value (18.47)."""
    drawn = _first_tokens(SearchConfig(sample=True, nbest=4, seed=7, max_len_b=2), 5000)
    assert drawn.numel() == 20000
    counts = torch.bincount(drawn, minlength=7)[2:].double()
    expected = FIRST.double() * drawn.numel()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.47, (counts.tolist(), expected.tolist())


def test_top_k_and_top_p_keep_only_the_likeliest_tokens() -> None:
    drawn = _first_tokens(SearchConfig(sample=True, top_k=2, seed=1, max_len_b=2), 4000)
    assert set(drawn.tolist()) == {3, 4}  # the two likeliest (0.4, 0.3), both drawn
    share = (drawn == 3).double().mean().item()
    assert share == pytest.approx(0.4 / 0.7, abs=0.03)  # renormalised over the two
    # top-p 0.75: 0.4 + 0.3 = 0.7 < 0.75, so the third likeliest (0.15) is in the nucleus; the rest is not
    drawn = _first_tokens(SearchConfig(sample=True, top_p=0.75, seed=1, max_len_b=2), 4000)
    assert set(drawn.tolist()) == {3, 4, 5}


def test_sampling_logits_cut_reference() -> None:
    lprobs = torch.tensor([[0.25, 0.5, 0.1, 0.15]]).log()
    # the smallest set of the likeliest tokens whose probability reaches p
    for top_p, kept in [(0.5, [0, 1, 0, 0]), (0.6, [1, 1, 0, 0]), (0.8, [1, 1, 0, 1]), (0.95, [1, 1, 1, 1])]:
        cut = sampling_logits(lprobs, SearchConfig(sample=True, top_p=top_p)).isfinite()
        assert cut.int().tolist() == [kept], top_p
    tempered = sampling_logits(lprobs, SearchConfig(sample=True, temperature=0.5))
    assert torch.allclose(tempered.softmax(-1), (lprobs * 2).softmax(-1))


def test_noise_is_uniform_and_keyed() -> None:
    lines = torch.arange(2000)
    u = uniform_noise(3, lines, torch.zeros_like(lines), 0, 50)
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    assert float(u.mean()) == pytest.approx(0.5, abs=0.005)
    assert float(u.var()) == pytest.approx(1 / 12, abs=0.002)
    # each part of the key changes the numbers
    for other in (
        uniform_noise(4, lines, torch.zeros_like(lines), 0, 50),
        uniform_noise(3, lines + 1, torch.zeros_like(lines), 0, 50),
        uniform_noise(3, lines, torch.ones_like(lines), 0, 50),
        uniform_noise(3, lines, torch.zeros_like(lines), 1, 50),
    ):
        assert (other != u).float().mean() > 0.99


@pytest.fixture(scope="module")
def transformer() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(40, 40, SP, d_model=32, heads=4, ffn_dim=64, encoder_layers=1, decoder_layers=1, dropout=0.0)
    with torch.no_grad():
        model.output.bias[SP.eos] += 1.5  # varied lengths
    return model.eval()


def _sources(count: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(5)
    return [
        torch.randint(4, 40, (int(n),), generator=gen).tolist() for n in torch.randint(1, 12, (count,), generator=gen)
    ]


def test_temperature_zero_and_near_zero_are_greedy(transformer: Transformer) -> None:
    sources = _sources(20)
    src = pad_sequences(sources, SP.pad, suffix=SP.eos)
    greedy = [nbest[0].tokens for nbest in greedy_search(transformer, src, 1.5, 5)]
    for temperature in (0.0, 1e-4):
        cfg = SearchConfig(sample=True, temperature=temperature, max_len_a=1.5, max_len_b=5)
        assert [nbest[0].tokens for nbest in search(transformer, src, cfg)] == greedy


def test_samples_do_not_depend_on_batching_or_workers(transformer: Transformer) -> None:
    sources = _sources(30)
    cfg = SearchConfig(sample=True, nbest=3, top_k=20, seed=11, max_len_a=1.5, max_len_b=5)

    def run(batch_tokens: int, workers: int, first_line: int = 0) -> list[list[tuple[list[int], float]]]:
        hyps = translate_ids(transformer, sources, cfg, batch_tokens, workers=workers, first_line=first_line)
        return [[(h.tokens, h.log_prob) for h in nbest] for nbest in hyps]

    def tokens(found: list[list[tuple[list[int], float]]]) -> list[list[list[int]]]:
        return [[t for t, _ in nbest] for nbest in found]

    one_by_one = run(batch_tokens=1, workers=1)
    for other in (run(batch_tokens=4000, workers=1), run(batch_tokens=60, workers=2)):
        assert tokens(other) == tokens(one_by_one)
        assert [lp for nbest in other for _, lp in nbest] == pytest.approx(
            [lp for nbest in one_by_one for _, lp in nbest], abs=1e-3
        )
    assert all(len(nbest) == 3 for nbest in one_by_one)
    assert sum(len({tuple(t) for t, _ in nbest}) > 1 for nbest in one_by_one) > 10  # the samples differ
    shifted = run(batch_tokens=4000, workers=1, first_line=1)
    assert tokens(shifted) != tokens(one_by_one)  # the line number is part of the key
    # the log_prob of a sample is the model's own (temperature and cuts do not change it): check one by scoring
    from seqtool.decode.search import score_sequence

    tokens, log_prob = one_by_one[14][0]
    src = pad_sequences([sources[14]], SP.pad, suffix=SP.eos)
    forced = score_sequence(transformer, src, torch.tensor([tokens]) if tokens else torch.zeros(1, 0, dtype=torch.long))
    assert float(forced[0]) == pytest.approx(log_prob, abs=1e-3)


@pytest.mark.parametrize(
    ("field", "value"), [("top_p", 0.0), ("top_p", 1.5), ("top_k", -1), ("temperature", -0.5), ("nbest", 0)]
)
def test_bad_sampling_options_are_config_errors(transformer: Transformer, field: str, value: float) -> None:
    cfg = SearchConfig(sample=True, **{field: value})
    with pytest.raises(ConfigError, match=field if field != "nbest" else "nbest"):
        search(transformer, pad_sequences([[5, 6]], SP.pad, suffix=SP.eos), cfg)


# ---------------------------------------------------------------------------------------------------------------------
# target prefixes (greedy, beam, sampling)


@pytest.mark.parametrize(
    "cfg",
    [
        SearchConfig(beam=1, max_len_a=1.5, max_len_b=5),
        SearchConfig(beam=4, nbest=3, max_len_a=1.5, max_len_b=5),
        SearchConfig(sample=True, nbest=2, seed=3, max_len_a=1.5, max_len_b=5),
    ],
    ids=["greedy", "beam", "sample"],
)
def test_a_prefix_starts_every_output_and_its_own_output_changes_nothing(transformer: Transformer, cfg) -> None:
    sources = _sources(12)
    free = translate_ids(transformer, sources, cfg)
    # the model's own best output as the prefix (cut after 3 tokens, or whole): the output is unchanged
    for cut in (3, None):
        prefixes = [nbest[0].tokens[:cut] for nbest in free]
        forced = translate_ids(transformer, sources, cfg, prefixes=prefixes)
        assert [nbest[0].tokens for nbest in forced] == [nbest[0].tokens for nbest in free]
        assert [nbest[0].log_prob for nbest in forced] == pytest.approx([nbest[0].log_prob for nbest in free], abs=1e-4)
    # any prefix, even one the model would never choose and longer than the length limit, starts every output
    prefixes = [[7, 7, 9, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 10, 11][: 2 + i] for i in range(12)]
    forced = translate_ids(transformer, sources, cfg, prefixes=prefixes)
    for prefix, nbest in zip(prefixes, forced, strict=True):
        assert nbest and all(hyp.tokens[: len(prefix)] == prefix for hyp in nbest)
    # the score includes the prefix's tokens: teacher forcing agrees
    from seqtool.decode.search import score_sequence

    best = forced[5][0]
    src = pad_sequences([sources[5]], SP.pad, suffix=SP.eos)
    assert float(score_sequence(transformer, src, torch.tensor([best.tokens]))[0]) == pytest.approx(
        best.log_prob, abs=1e-3
    )
