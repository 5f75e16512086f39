"""Decoding invariants: the key/value cache changes nothing, and neither does the batch a sentence is decoded in."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from torch import Tensor

from seqtool.decode.quantize import quantize_model
from seqtool.decode.search import SearchConfig, search
from seqtool.decode.translate import translate_ids
from seqtool.models.base import DecoderState, EncoderOutput, Seq2SeqModel
from seqtool.models.rnn import RNNSeq2Seq
from seqtool.models.transformer import Transformer
from seqtool.tokenizer import SpecialIds

SPECIALS = SpecialIds(pad=0, bos=1, eos=2, unk=3)
VOCAB = 40


class NoCache(Seq2SeqModel):
    """The wrapped model decoded the slow way: every step re-runs the full teacher-forced forward on the prefix."""

    def __init__(self, inner: Seq2SeqModel) -> None:
        super().__init__()
        self.inner = inner
        self.specials = inner.specials

    def features(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.inner.features(src, tgt_in)

    def encode(self, src: Tensor) -> EncoderOutput:
        return EncoderOutput(memory=src, src_mask=src != self.specials.pad)

    def init_state(self, enc: EncoderOutput) -> DecoderState:
        empty = enc.memory.new_zeros(enc.memory.size(0), 0)
        return {"src": enc.memory, "prefix": empty}

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        prefix = torch.cat([state["prefix"], tokens[:, None]], dim=1)
        return self.inner(state["src"], prefix)[:, -1], {"src": state["src"], "prefix": prefix}


def peaky(model: Seq2SeqModel) -> Seq2SeqModel:
    """Sharpen the output distribution of a random model, so that no two candidates tie within float noise."""
    with torch.no_grad():
        model.output.weight.mul_(6.0)
    return model.eval()


def transformer() -> Seq2SeqModel:
    torch.manual_seed(0)
    model = Transformer(VOCAB, VOCAB, SPECIALS, d_model=32, heads=4, ffn_dim=64, encoder_layers=2, decoder_layers=2,
                        tie_output=False)  # fmt: skip
    return peaky(model)


def gru() -> Seq2SeqModel:
    torch.manual_seed(0)
    return peaky(RNNSeq2Seq(VOCAB, VOCAB, SPECIALS, cell="gru", embed_dim=16, hidden_size=16, attention="luong"))


def transformer_int8() -> Seq2SeqModel:
    return quantize_model(transformer(), "int8", torch.device("cpu"))


def gru_int8() -> Seq2SeqModel:
    return quantize_model(gru(), "int8", torch.device("cpu"))


def sources(count: int, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, VOCAB) for _ in range(rng.randint(1, 12))] for _ in range(count)]


def as_batch(seqs: list[list[int]]) -> Tensor:
    width = max(len(s) for s in seqs) + 1
    return torch.tensor([s + [SPECIALS.eos] + [SPECIALS.pad] * (width - len(s) - 1) for s in seqs])


@pytest.mark.parametrize("make", [transformer, gru], ids=["transformer", "gru"])
@pytest.mark.parametrize("beam", [1, 4])
def test_search_with_the_cache_equals_search_without_it(make: Any, beam: int) -> None:
    model = make()
    src = as_batch(sources(12))
    cfg = SearchConfig(beam=beam, nbest=beam, length_penalty=1.0, max_len_a=1.2, max_len_b=4)
    cached, uncached = search(model, src, cfg), search(NoCache(model).eval(), src, cfg)
    for fast, slow in zip(cached, uncached, strict=True):
        assert [h.tokens for h in fast] == [h.tokens for h in slow]
        for a, b in zip(fast, slow, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-4)


@pytest.mark.parametrize(
    "make", [transformer, gru, transformer_int8, gru_int8], ids=["transformer", "gru", "transformer-int8", "gru-int8"]
)
@pytest.mark.parametrize("beam", [1, 5])
def test_outputs_do_not_depend_on_the_batch(make: Any, beam: int) -> None:
    model = make()
    src = sources(50, seed=2)
    cfg = SearchConfig(beam=beam, nbest=1, length_penalty=1.0, max_len_a=1.5, max_len_b=5)
    one_by_one = translate_ids(model, src, cfg, batch_tokens=1)  # every sentence alone
    all_at_once = translate_ids(model, src, cfg, batch_tokens=100_000)  # the 50 sentences in one batch
    assert [h[0].tokens for h in one_by_one] == [h[0].tokens for h in all_at_once]
    # int8: each row is quantized on its own, but fp32 noise (padding, kernel blocking) in a layer's input can move
    # a value across a rounding boundary: one int8 step, measured 2e-4 in one sentence's log-prob of 50
    tolerance = 1e-3 if make in (transformer_int8, gru_int8) else 1e-4
    torch.testing.assert_close(
        torch.tensor([h[0].log_prob for h in one_by_one]), torch.tensor([h[0].log_prob for h in all_at_once]),
        atol=tolerance, rtol=0,
    )  # fmt: skip


@pytest.mark.parametrize("make", [transformer, gru], ids=["transformer", "gru"])
def test_parallel_workers_give_the_same_outputs_in_input_order(make: Any) -> None:
    model = make()
    src = [*sources(50, seed=3), []]  # and an empty source, which gets no hypotheses
    cfg = SearchConfig(beam=3, nbest=2, length_penalty=1.0, max_len_a=1.5, max_len_b=5)
    serial = translate_ids(model, src, cfg, batch_tokens=60)
    parallel = translate_ids(model, src, cfg, batch_tokens=60, workers=3)  # ~20 batches over three threads
    assert [[h.tokens for h in n] for n in parallel] == [[h.tokens for h in n] for n in serial]
    for ours, theirs in zip(parallel, serial, strict=True):  # the same batches: at most float noise
        assert [h.log_prob for h in ours] == pytest.approx([h.log_prob for h in theirs], abs=1e-4)
    assert parallel[-1] == []
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()  # the caller's modes are untouched


def test_a_failing_batch_stops_the_parallel_search() -> None:
    model = transformer()
    calls = 0

    def fail_on_the_third(tokens: Tensor, state: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("boom")
        return Transformer.step(model, tokens, state)

    model.step = fail_on_the_third  # type: ignore[method-assign]
    cfg = SearchConfig(beam=2, nbest=1, length_penalty=1.0, max_len_a=1.5, max_len_b=5)
    with pytest.raises(RuntimeError, match="boom"):
        translate_ids(model, sources(40, seed=4), cfg, batch_tokens=30, workers=2)
