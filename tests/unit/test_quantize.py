"""int8 decoding (`seqtool.decode.quantize`): per-row quantization, its reference maths, and what it replaces."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from seqtool.decode import quantize
from seqtool.decode.quantize import Int8Linear, quantize_model, quantize_rows, resolve_quantize
from seqtool.errors import SeqtoolError
from seqtool.models.rnn import RNNSeq2Seq
from seqtool.models.transformer import Transformer
from seqtool.tokenizer import SpecialIds

SPECIALS = SpecialIds(pad=0, bos=1, eos=2, unk=3)
CPU = torch.device("cpu")


def linear(in_features: int = 48, out_features: int = 40, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features, bias=bias)


def test_quantize_rows_is_symmetric_per_row_and_round_trips_within_half_a_step() -> None:
    torch.manual_seed(1)
    x = torch.randn(6, 32) * torch.tensor([0.01, 1.0, 100.0, 3.0, 0.5, 7.0])[:, None]
    x[3] = 0.0  # an all-zero row (padding) quantizes to zeros, not to NaN
    values, scale = quantize_rows(x)
    assert values.dtype == torch.int8 and scale.shape == (6, 1)
    assert values.abs().amax(1).tolist() == [127, 127, 127, 0, 127, 127]  # each row uses its full range
    assert torch.all((values.float() * scale - x).abs() <= scale / 2 + 1e-7)


def test_int8_linear_equals_the_reference_int8_product_and_is_close_to_fp32() -> None:
    layer = linear()
    x = torch.randn(2, 5, 48)
    out = Int8Linear(layer)(x)
    assert out.shape == (2, 5, 40) and out.dtype == torch.float32
    # the reference: both operands quantized per row, multiplied in float64, rescaled, biased
    xq, xs = quantize_rows(x.reshape(-1, 48))
    wq, ws = quantize_rows(layer.weight.detach())
    reference = (xq.double() @ wq.double().T) * xs.double() * ws.double().T + layer.bias.detach().double()
    torch.testing.assert_close(out.reshape(-1, 40).double(), reference, rtol=1e-6, atol=1e-6)
    exact = layer(x).detach()
    relative = (out - exact).norm() / exact.norm()
    assert relative < 0.02, relative  # measured: 0.005 (int8 steps of 1/127 of each row's largest value)


def test_a_rows_output_does_not_depend_on_the_other_rows() -> None:
    """Per-row scales and exact integer sums: a sentence's numbers do not change with its batch (torch.ao's dynamic
    quantization, one scale per tensor, fails this)."""
    layer = Int8Linear(linear())
    torch.manual_seed(2)
    rows = torch.randn(9, 48)
    alone = torch.cat([layer(row[None]) for row in rows])
    big = torch.cat([rows, 50.0 * torch.randn(30, 48), torch.zeros(4, 48)])  # loud neighbours and padding
    assert torch.equal(layer(big)[:9], alone)
    assert torch.equal(layer(torch.zeros(3, 48)), layer.bias.expand(3, 40))


def test_int8_linear_without_bias() -> None:
    layer = linear(bias=False)
    quantized = Int8Linear(layer)
    assert quantized.bias is None
    x = torch.randn(4, 48)
    torch.testing.assert_close(quantized(x), layer(x).detach(), rtol=0.05, atol=0.05)


def tiny_transformer() -> Transformer:
    torch.manual_seed(0)
    return Transformer(50, 50, SPECIALS, d_model=32, heads=4, ffn_dim=64, encoder_layers=2, decoder_layers=2)


def test_quantize_model_replaces_every_linear_fuses_self_attention_and_keeps_the_original() -> None:
    model = tiny_transformer().eval()
    before = copy.deepcopy(model.state_dict())
    quantized = quantize_model(model, "int8", CPU)
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    assert isinstance(quantized.output, Int8Linear)
    for layer in quantized.decoder_layers:
        assert isinstance(layer.self_attn.qkv_proj, Int8Linear)
    assert quantized.tgt_embed.weight.dtype == torch.float32
    assert torch.equal(quantized.tgt_embed.weight, model.tgt_embed.weight)  # the tied embedding stays fp32
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    src = torch.tensor([[5, 6, 7, 2], [8, 9, 2, 0]])
    tgt = torch.tensor([[1, 10, 11], [1, 12, 0]])
    with torch.inference_mode():
        exact, approx = model(src, tgt), quantized(src, tgt)
    assert (exact.argmax(-1) == approx.argmax(-1)).float().mean() >= 0.8
    torch.testing.assert_close(approx, exact, rtol=0.0, atol=0.15)  # logits: int8 noise only


def test_fused_qkv_gives_the_same_decoder_outputs() -> None:
    model = tiny_transformer().eval()
    fused = copy.deepcopy(model)
    for layer in fused.decoder_layers:
        layer.self_attn.fuse_qkv()
    src = torch.tensor([[5, 6, 7, 2], [8, 9, 2, 0]])
    tgt = torch.tensor([[1, 10, 11], [1, 12, 0]])
    with torch.inference_mode():
        torch.testing.assert_close(fused(src, tgt), model(src, tgt), rtol=1e-5, atol=1e-5)


def test_quantize_model_refuses_other_devices_and_schemes() -> None:
    model = tiny_transformer()
    with pytest.raises(SeqtoolError, match="CPU only"):
        quantize_model(model, "int8", torch.device("cuda"))
    with pytest.raises(SeqtoolError, match="unknown quantization 'int4'"):
        quantize_model(model, "int4", CPU)


def test_quantize_model_on_an_rnn_keeps_its_recurrent_layers_fp32() -> None:
    torch.manual_seed(0)
    model = RNNSeq2Seq(50, 50, SPECIALS, cell="lstm", embed_dim=16, hidden_size=16, attention="bahdanau").eval()
    quantized = quantize_model(model, "int8", CPU)
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    assert any(isinstance(m, nn.LSTM) for m in quantized.modules())


@pytest.mark.parametrize(
    ("choice", "device", "precision", "kind", "expected"),
    [
        ("auto", "cpu", "fp32", "transformer", "int8"),
        ("auto", "cpu", "bf16", "transformer", "none"),
        ("auto", "cuda", "fp32", "transformer", "none"),
        ("auto", "cpu", "fp32", "rnn", "none"),
        ("none", "cpu", "fp32", "transformer", "none"),
        ("int8", "cpu", "fp32", "rnn", "int8"),
    ],
)
def test_resolve_quantize(
    choice: str, device: str, precision: str, kind: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quantize, "int8_pays", lambda: True)  # an AVX-512 CPU
    assert resolve_quantize(choice, torch.device(device), precision, kind) == expected


def test_auto_keeps_fp32_where_int8_is_slower(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantize, "int8_pays", lambda: False)  # an AVX2-only CPU: int8 measured 5.4x slower there
    assert resolve_quantize("auto", torch.device("cpu"), "fp32", "transformer") == "none"
    assert resolve_quantize("int8", torch.device("cpu"), "fp32", "transformer") == "int8"  # asked for: as asked


def test_int8_pays_follows_the_cpu_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    for capability, expected in [("AVX512", True), ("AVX512_BF16", True), ("AVX2", False), ("DEFAULT", False)]:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert quantize.int8_pays() is expected
