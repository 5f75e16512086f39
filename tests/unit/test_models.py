"""Invariants of the neural models: attention maths, causality, cache == no cache, padding, reordering, gradients."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqtool.models.attention import BahdanauAttention, LuongAttention, MultiHeadAttention
from seqtool.models.base import Seq2SeqModel
from seqtool.models.rnn import RNNSeq2Seq
from seqtool.models.transformer import Transformer
from seqtool.tokenizer import SpecialIds

SPECIALS = SpecialIds(pad=0, bos=1, eos=2, unk=3)
VOCAB = 13
ATOL = 1e-5


def transformer(pre_norm: bool = True, **kwargs: object) -> Transformer:
    """A tiny transformer."""
    args: dict = dict(d_model=16, heads=2, ffn_dim=32, encoder_layers=2, decoder_layers=2, pre_norm=pre_norm)
    return Transformer(VOCAB, VOCAB, SPECIALS, **(args | kwargs))


def rnn(cell: str, attention: str, bidirectional: bool = True, layers: int = 2, **kwargs: object) -> RNNSeq2Seq:
    """A tiny RNN encoder–decoder."""
    args: dict = dict(embed_dim=8, hidden_size=12, encoder_layers=layers, decoder_layers=layers)
    return RNNSeq2Seq(
        VOCAB, VOCAB, SPECIALS, cell=cell, attention=attention, bidirectional=bidirectional, **(args | kwargs)
    )


MODELS: dict[str, Callable[[], Seq2SeqModel]] = {
    "transformer-pre": lambda: transformer(pre_norm=True),
    "transformer-post": lambda: transformer(pre_norm=False, activation="gelu"),
    **{
        f"{cell}-{attention}": (lambda cell=cell, attention=attention: rnn(cell, attention))
        for cell in ("gru", "lstm")
        for attention in ("none", "bahdanau", "luong")
    },
    "gru-bahdanau-uni-1layer": lambda: rnn("gru", "bahdanau", bidirectional=False, layers=1),
    "lstm-luong-uni-1layer": lambda: rnn("lstm", "luong", bidirectional=False, layers=1),
}


@pytest.fixture(params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> Seq2SeqModel:
    torch.manual_seed(0)
    return MODELS[request.param]().eval()


def tokens(*rows: list[int]) -> Tensor:
    """A right-padded (batch, len) id tensor."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [SPECIALS.pad] * (width - len(r)) for r in rows])


SRC = tokens([5, 6, 7, 8, 2], [9, 4, 10, 11, 12, 6, 2], [4, 2])
TGT_IN = tokens([1, 7, 8, 9, 5], [1, 12, 11, 4, 6, 10], [1, 5])


def step_logits(model: Seq2SeqModel, src: Tensor, tgt_in: Tensor) -> Tensor:
    """Logits (batch, tgt_len, vocab) from encode + init_state + step, one token at a time."""
    state = model.init_state(model.encode(src))
    outputs = []
    for t in range(tgt_in.size(1)):
        logits, state = model.step(tgt_in[:, t], state)
        outputs.append(logits)
    return torch.stack(outputs, dim=1)


# --- attention modules ---------------------------------------------------------------------------------------------


def copy_from_torch(reference: nn.MultiheadAttention, d_model: int, heads: int) -> MultiHeadAttention:
    mha = MultiHeadAttention(d_model, heads, dropout=0.0)
    with torch.no_grad():
        for proj, weight, bias in zip(
            (mha.q_proj, mha.k_proj, mha.v_proj),
            reference.in_proj_weight.chunk(3),
            reference.in_proj_bias.chunk(3),
            strict=True,
        ):
            proj.weight.copy_(weight)
            proj.bias.copy_(bias)
        mha.out_proj.load_state_dict(reference.out_proj.state_dict())
    return mha.eval()


@pytest.mark.parametrize(("padded", "causal"), [(False, False), (True, False), (False, True), (True, True)])
def test_multi_head_attention_matches_torch(padded: bool, causal: bool) -> None:
    torch.manual_seed(0)
    d_model, heads, length = 16, 4, 6
    reference = nn.MultiheadAttention(d_model, heads, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_bias.normal_()  # non-zero biases so that the copy of the bias is tested too
    mha = copy_from_torch(reference, d_model, heads)
    query, memory = torch.randn(3, length, d_model), torch.randn(3, length, d_model)
    key_mask = torch.arange(length)[None, :] < torch.tensor([[6], [4], [2]]) if padded else None  # True = real
    causal_mask = torch.ones(length, length, dtype=torch.bool).triu(1) if causal else None  # torch: True = blocked
    expected, _ = reference(
        query,
        memory,
        memory,
        key_padding_mask=None if key_mask is None else ~key_mask,
        attn_mask=causal_mask,
        need_weights=False,
    )
    actual = mha(query, memory, memory, key_padding_mask=key_mask, causal=causal)
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)
    # The split API (project keys/values once, attend later) is the same computation.
    torch.testing.assert_close(mha.attend(query, *mha.project_kv(memory), key_mask, causal), actual, atol=ATOL, rtol=0)


def test_multi_head_attention_weights_path() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, dropout=0.0).eval()
    query, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    key_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    weights = mha.weights(query, memory, key_mask, average_heads=False)  # (batch, heads, q_len, key_len)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 3))
    assert (weights[1, :, :, 3:] == 0).all()
    # weights @ V, merged and projected, is the fused forward.
    _, v = mha.project_kv(memory)
    merged = (weights @ v).transpose(1, 2).reshape(2, 3, 16)
    torch.testing.assert_close(mha.out_proj(merged), mha(query, memory, memory, key_mask), atol=ATOL, rtol=0)
    torch.testing.assert_close(mha.weights(query, memory, key_mask), weights.mean(1))


def test_multi_head_attention_causal_with_cached_keys() -> None:
    """Queries for the last positions over all (cached) keys see exactly what they see in the full causal pass."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, dropout=0.0).eval()
    x = torch.randn(2, 5, 16)
    full = mha(x, x, x, causal=True)
    torch.testing.assert_close(mha.attend(x[:, 3:], *mha.project_kv(x), causal=True), full[:, 3:], atol=ATOL, rtol=0)


def test_multi_head_attention_rejects_indivisible_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3, dropout=0.0)


@pytest.mark.parametrize("kind", ["bahdanau", "luong"])
def test_rnn_attention_masks_and_shapes(kind: str) -> None:
    torch.manual_seed(0)
    attention = BahdanauAttention(6, 8, 5) if kind == "bahdanau" else LuongAttention(6, 8)
    query, keys = torch.randn(2, 6), torch.randn(2, 4, 8)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    context, weights = attention(query, keys, mask)
    assert context.shape == (2, 8) and weights.shape == (2, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert (weights[1, 2:] == 0).all()
    torch.testing.assert_close(context, torch.einsum("bk,bkd->bd", weights, keys))
    # Several queries at once give the same as one at a time; precomputed keys give the same as none.
    many_context, many_weights = attention(torch.stack([query, 2 * query], 1), keys, mask)
    torch.testing.assert_close(many_context[:, 0], context)
    torch.testing.assert_close(many_weights[:, 1], attention(2 * query, keys, mask)[1])
    if isinstance(attention, BahdanauAttention):
        torch.testing.assert_close(attention(query, keys, mask, attention.precompute(keys))[0], context)


# --- model invariants ----------------------------------------------------------------------------------------------


def test_later_tokens_do_not_change_earlier_logits(model: Seq2SeqModel) -> None:
    changed = TGT_IN.clone()
    changed[:, 3:] = torch.randint(4, VOCAB, changed[:, 3:].shape)
    with torch.no_grad():
        before, after = model(SRC, TGT_IN), model(SRC, changed)
    assert before.shape == (3, TGT_IN.size(1), VOCAB)
    torch.testing.assert_close(after[:, :3], before[:, :3], atol=ATOL, rtol=0)
    assert not torch.allclose(after[:, 3:], before[:, 3:])


def test_incremental_decoding_equals_full_forward(model: Seq2SeqModel) -> None:
    with torch.no_grad():
        torch.testing.assert_close(step_logits(model, SRC, TGT_IN), model(SRC, TGT_IN), atol=ATOL, rtol=0)


def test_padding_does_not_change_outputs(model: Seq2SeqModel) -> None:
    src, tgt_in = SRC[2:, :2], TGT_IN[2:, :2]  # the short sentence alone, no padding
    with torch.no_grad():
        alone = model(src, tgt_in)
        batched = model(SRC, TGT_IN)[2:, :2]  # padded next to longer source and target sentences
        stepped = step_logits(model, SRC, TGT_IN)[2:, :2]
    torch.testing.assert_close(batched, alone, atol=ATOL, rtol=0)
    torch.testing.assert_close(stepped, alone, atol=ATOL, rtol=0)


def test_reorder_state_repeats_rows(model: Seq2SeqModel) -> None:
    index = torch.tensor([1, 1, 0, 2, 0])
    with torch.no_grad():
        state = model.init_state(model.encode(SRC))
        _, state = model.step(TGT_IN[:, 0], state)
        expected, _ = model.step(TGT_IN[:, 1], state)
        reordered = model.reorder_state(state, index)
        logits, reordered = model.step(TGT_IN[index, 1], reordered)
        torch.testing.assert_close(logits, expected[index], atol=ATOL, rtol=0)
        # And decoding continues consistently after the reorder.
        _, state = model.step(TGT_IN[:, 1], state)
        expected, _ = model.step(TGT_IN[:, 2], state)
        logits, _ = model.step(TGT_IN[index, 2], reordered)
    torch.testing.assert_close(logits, expected[index], atol=ATOL, rtol=0)


def test_expanded_state_matches_plain_row_copies(model: Seq2SeqModel) -> None:
    # expand_state may keep the encoder side once per sentence (Transformer); the logits must equal those of a state
    # whose rows were simply copied, through a reorder within the beams and a reorder that drops a sentence.
    beam = 2
    with torch.no_grad():
        state = model.init_state(model.encode(SRC))
        _, state = model.step(TGT_IN[:, 0], state)
        expanded = model.expand_state(state, torch.arange(3), beam)
        plain = Seq2SeqModel.reorder_state(model, state, torch.arange(3).repeat_interleave(beam))
        prev = TGT_IN[torch.arange(3).repeat_interleave(beam), 1]
        for index in (torch.tensor([1, 0, 2, 2, 5, 4]), torch.tensor([1, 1, 4, 5])):  # then sentence 1 leaves
            got, expanded = model.step(prev, expanded)
            want, plain = model.step(prev, plain)
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
            expanded, plain = model.reorder_state(expanded, index), Seq2SeqModel.reorder_state(model, plain, index)
        got, _ = model.step(TGT_IN[[0, 0, 2, 2], 2], expanded)
        want, _ = model.step(TGT_IN[[0, 0, 2, 2], 2], plain)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_stepping_one_state_twice_gives_independent_states(model: Seq2SeqModel) -> None:
    # the Transformer writes its caches in place; a second continuation of the same state must not disturb the first
    with torch.no_grad():
        state = model.init_state(model.encode(SRC))
        _, state = model.step(TGT_IN[:, 0], state)
        _, first = model.step(TGT_IN[:, 1], state)
        _, second = model.step(TGT_IN[:, 1].flip(0), state)  # other tokens at the same position
        got, _ = model.step(TGT_IN[:, 2], first)
        want = model(SRC, TGT_IN[:, :3])[:, 2]
        got_second, _ = model.step(TGT_IN[:, 2], second)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert not torch.allclose(got_second, want, atol=ATOL)


def test_gradients_reach_every_parameter(model: Seq2SeqModel) -> None:
    model.train()
    tgt_out = torch.cat([TGT_IN[:, 1:], torch.full((3, 1), SPECIALS.eos)], dim=1)
    logits = model(SRC, TGT_IN)
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt_out.reshape(-1), ignore_index=SPECIALS.pad)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        # A key bias adds the same score to every key of a query, which the softmax cancels: its gradient is 0.
        if not name.endswith("k_proj.bias"):
            assert parameter.grad.abs().sum() > 0, name


def test_bf16_autocast_runs(model: Seq2SeqModel) -> None:
    """Under bf16 autocast, both the full-sequence forward and step-by-step decoding give bf16 logits within bf16
    rounding of the fp32 ones."""
    with torch.no_grad():  # a CPU without bf16 kernels runs the LSTM cells in fp32 (rnn.run_recurrent), the rest bf16
        reference = model(SRC, TGT_IN)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(SRC, TGT_IN)
            stepped = step_logits(model, SRC, TGT_IN)
    assert logits.shape == stepped.shape == (3, TGT_IN.size(1), VOCAB)
    assert logits.dtype == stepped.dtype == torch.bfloat16  # autocast reached the output layer
    real = TGT_IN.ne(SPECIALS.pad)
    spread = (reference - reference.mean(-1, keepdim=True))[real].norm()
    for name, got in (("forward", logits), ("step", stepped)):
        error = float((got.float() - reference)[real].norm() / spread)
        assert 0.0 < error < 0.05, (name, error)  # measured: 0.003 to 0.009 (bf16 keeps 8 significant bits)


def test_attention_weights(model: Seq2SeqModel) -> None:
    weights = model.attention_weights(SRC, TGT_IN)
    if isinstance(model, RNNSeq2Seq) and model.attention is None:
        assert weights is None
        return
    assert weights is not None and weights.shape == (3, TGT_IN.size(1), SRC.size(1))
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, TGT_IN.size(1)))
    assert (weights[2, :, 2:] == 0).all()  # padding of the short source gets no attention


# --- options ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory", [transformer, lambda **kw: rnn("gru", "luong", hidden_size=8, **kw)], ids=["transformer", "rnn"]
)
def test_shared_and_tied_weights(factory: Callable[..., Seq2SeqModel]) -> None:
    shared = factory(share_embeddings=True, tie_output=True)
    assert shared.src_embed.weight.data_ptr() == shared.tgt_embed.weight.data_ptr() == shared.output.weight.data_ptr()
    separate = factory(share_embeddings=False, tie_output=False)
    pointers = {separate.src_embed.weight.data_ptr(), separate.tgt_embed.weight.data_ptr()}
    assert len(pointers | {separate.output.weight.data_ptr()}) == 3
    vocab_params = shared.tgt_embed.weight.numel()
    assert shared.num_parameters() == separate.num_parameters() - 2 * vocab_params
    assert shared.tgt_embed.weight[SPECIALS.pad].eq(0).all()


@pytest.mark.parametrize("cls", [Transformer, RNNSeq2Seq])
def test_share_embeddings_needs_equal_vocabularies(cls: type[Seq2SeqModel]) -> None:
    with pytest.raises(ValueError, match="share_embeddings"):
        cls(VOCAB, VOCAB + 1, SPECIALS, share_embeddings=True)


def test_transformer_positions_beyond_max_positions() -> None:
    torch.manual_seed(0)
    short = transformer(max_positions=3).eval()
    long = transformer().eval()
    long.load_state_dict(short.state_dict())  # positions are not in the state dict
    assert not any("positions" in key for key in short.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(short(SRC, TGT_IN), long(SRC, TGT_IN), atol=ATOL, rtol=0)
        torch.testing.assert_close(step_logits(short, SRC, TGT_IN), long(SRC, TGT_IN), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: transformer(activation="tanh"),
        lambda: rnn("rnn", "none"),
        lambda: rnn("gru", "dot"),
    ],
    ids=["activation", "cell", "attention"],
)
def test_unknown_choices_raise(make: Callable[[], Seq2SeqModel]) -> None:
    with pytest.raises(ValueError, match="unknown"):
        make()
