"""Continuous batching: sentences that join a running beam search get what a search of their own gives them."""

from __future__ import annotations

import pytest
import torch

from seqtool.data.batching import pad_sequences
from seqtool.decode.search import BeamSearch, Hypothesis, SearchConfig, beam_search
from seqtool.models.rnn import RNNSeq2Seq
from seqtool.models.transformer import Transformer
from seqtool.tokenizer import SpecialIds

SP = SpecialIds(pad=0, bos=1, eos=2, unk=3)
VOCAB = 24


def _peaky(model: torch.nn.Module) -> torch.nn.Module:
    """Sharper output distributions: varied lengths and few near-ties between hypotheses."""
    torch.manual_seed(3)
    with torch.no_grad():
        model.output.weight.mul_(6.0)
        model.output.bias.uniform_(-2.0, 2.0)
    return model.eval()


def _models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "transformer": _peaky(
            Transformer(
                VOCAB,
                VOCAB,
                SP,
                d_model=32,
                heads=4,
                ffn_dim=64,
                encoder_layers=2,
                decoder_layers=2,
                dropout=0.0,
                attention_dropout=0.0,
            )
        ),
        "gru-luong": _peaky(
            RNNSeq2Seq(VOCAB, VOCAB, SP, cell="gru", embed_dim=16, hidden_size=16, attention="luong", dropout=0.0)
        ),
        "lstm-bahdanau": _peaky(
            RNNSeq2Seq(VOCAB, VOCAB, SP, cell="lstm", embed_dim=16, hidden_size=16, attention="bahdanau", dropout=0.0)
        ),
    }


def _sources(count: int, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 14, (count,), generator=gen).tolist()
    return [torch.randint(4, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def _src(ids: list[list[int]]) -> torch.Tensor:
    return pad_sequences(ids, SP.pad, suffix=SP.eos)


def _same(a: list[Hypothesis], b: list[Hypothesis]) -> None:
    assert [h.tokens for h in a] == [h.tokens for h in b]
    assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
    assert [h.log_prob for h in a] == pytest.approx([h.log_prob for h in b], abs=1e-4)


@pytest.mark.parametrize("name", ["transformer", "gru-luong", "lstm-bahdanau"])
@pytest.mark.parametrize("stop", ["heuristic", "exact"])
def test_sentences_joining_a_running_search_get_their_own_results(name: str, stop: str) -> None:
    model = _models()[name]
    cfg = SearchConfig(beam=4, nbest=3, length_penalty=1.0, max_len_a=1.2, max_len_b=3, stop=stop)
    sources = _sources(12)
    alone = [beam_search(model, _src([ids]), cfg)[0] for ids in sources]

    # admit the sentences a few at a time, every other step, while the others are searched
    searcher = BeamSearch(model, cfg, torch.device("cpu"))
    found: dict[int, list[Hypothesis]] = {}
    waiting = list(range(len(sources)))
    joined_late = 0
    with torch.inference_mode():
        steps = 0
        while waiting or searcher.live:
            if waiting and steps % 2 == 0:
                group, waiting = waiting[:3], waiting[3:]
                joined_late += bool(searcher.live)
                searcher.admit(_src([sources[i] for i in group]), group)
            for key, hyps in searcher.step():
                assert key not in found
                found[key] = hyps
            steps += 1
    assert joined_late >= 2  # the test does exercise sentences joining a running search
    assert sorted(found) == list(range(len(sources)))
    for i, hyps in enumerate(alone):
        _same(found[i], hyps)


def test_transformer_merged_caches_are_trimmed() -> None:
    """Cache slots and source positions that no live row uses are dropped when states merge."""
    model = _models()["transformer"]
    cfg = SearchConfig(beam=2, nbest=1, max_len_a=0.0, max_len_b=30, length_penalty=0.0)
    searcher = BeamSearch(model, cfg, torch.device("cpu"))
    with torch.inference_mode():
        searcher.admit(_src([[5] * 12]), ["long"])
        for _ in range(5):
            searcher.step()
        searcher.admit(_src([[6, 7]]), ["short"])
        state = searcher._state
        assert state is not None and state["self_mask"].shape == (4, 5)
        assert state["self_mask"][2:].sum() == 0 and state["self_mask"][:2].all()
        assert state["pos"].tolist() == [5, 5, 0, 0]
        while "long" in searcher.keys:
            searcher.step()
        searcher.admit(_src([[8, 9, 10]]), ["third"])
        state = searcher._state
        assert state is not None
        # the long sentence left: its source length (13) and the slots before "short" joined are gone
        assert state["src_mask"].size(1) == 4
        assert state["self_mask"].size(1) == state["pos"].max().item()
