"""int8 inference on the CPU (`seqtool translate --quantize int8`, the default for a Transformer there).

Every `nn.Linear` becomes an `Int8Linear`: int8 weights with one scale per output row, and inputs quantized on the
fly with one scale per row (per token), multiplied in int8 with int32 accumulation (`torch._int_mm`, oneDNN's
VNNI/AMX kernels on x86). Each row of the input is quantized on its own, and integer sums are exact, so a sentence's
output does not depend on the other sentences of its batch (torch.ao's dynamic quantization takes one scale per
input tensor: the batch a sentence is decoded in would change its translation). CTranslate2 quantizes per row too.

Embeddings, layer norms, attention and the GRU/LSTM layers stay fp32. A tied output projection shares its weight with
the target embedding: the int8 output layer gets its own copy, and the embedding keeps the fp32 original.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from seqtool.errors import ConfigError, SeqtoolError
from seqtool.models.base import Seq2SeqModel
from seqtool.models.transformer import DecoderLayer

SCHEMES = ("int8",)
_INT8_MAX = 127.0  # symmetric: -127..127, so that no value needs -128 and negation is exact
_TINY = 1e-12  # the scale of an all-zero row (padding): any positive number quantizes it to zeros


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 quantization of a 2-D tensor, a scale per row: (int8 values, float scales of shape (rows, 1))."""
    scale = x.abs().amax(1, keepdim=True).clamp_min_(_TINY).div_(_INT8_MAX)
    return torch.div(x, scale).round_().to(torch.int8), scale


class Int8Linear(nn.Module):
    """`nn.Linear` with int8 weights (a scale per output row) and inputs quantized per row at every call."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight, weight_scale = quantize_rows(linear.weight.detach().float())
        self.register_buffer("weight_int8", weight)  # (out, in)
        self.register_buffer("weight_scale", weight_scale.view(-1))
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.dtype != torch.float32:
            rows = rows.float()
        x_int8, x_scale = quantize_rows(rows)
        out = torch._int_mm(x_int8, self.weight_int8.t()).float().mul_(x_scale).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _replace_linear_layers(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
        else:
            _replace_linear_layers(child)


def resolve_quantize(choice: str, device: torch.device, precision: str, model_kind: str) -> str:
    """`translate --quantize` as applied: "auto" is int8 for a Transformer decoded in fp32 on a CPU with AVX-512
    (measured faster there, at no BLEU cost: README, Performance), else "none" (`int8_pays`); a GRU/LSTM keeps fp32
    unless asked (not measured)."""
    if choice != "auto":
        return choice
    fits = device.type == "cpu" and precision == "fp32" and model_kind == "transformer"
    return "int8" if fits and int8_pays() else "none"


def int8_pays() -> bool:
    """Whether this CPU has the AVX-512 kernels int8 products need to beat fp32: on an AVX2-only CPU (an AMD EPYC
    here, 2026-12-03) `torch._int_mm` made beam search 5.4x slower than fp32 (28.6 s against 5.3 s, 40 sentences)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def quantize_model(model: Seq2SeqModel, scheme: str, device: torch.device) -> Seq2SeqModel:
    """A copy of `model` (on the CPU, eval mode) whose Linear layers are `Int8Linear`; the original is unchanged.

    The int8 kernels used run on the CPU only: any other `device` is a SeqtoolError.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown quantization {scheme!r}", f"choose one of {', '.join(SCHEMES)}")
    if device.type != "cpu":
        raise SeqtoolError(
            f"--quantize {scheme} runs on the CPU only, not on {device.type}", "use --device cpu, or --quantize none"
        )
    if not hasattr(torch, "_int_mm"):
        raise SeqtoolError(f"this torch ({torch.__version__}) has no int8 matrix product", "use --quantize none")
    quantized = copy.deepcopy(model).to("cpu").eval()  # deepcopy keeps a tied output weight tied to its embedding
    for module in quantized.modules():
        if isinstance(module, DecoderLayer):
            module.self_attn.fuse_qkv()  # one int8 matmul instead of three per layer and step (the same rows)
    _replace_linear_layers(quantized)
    return quantized
