"""Dynamic int8 quantization of a model for CPU inference (`seqtool translate --quantize int8`).

`torch.ao.quantization.quantize_dynamic` replaces every `nn.Linear` by a version with int8 weights (one scale per
output row) whose activations are quantized on the fly, batch by batch. Embeddings, layer norms and the GRU/LSTM
layers of the RNN models stay fp32. A tied output projection shares its weight with the target embedding: the
quantized output layer gets its own int8 copy, and the embedding keeps the fp32 original.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from seqtool.errors import ConfigError, SeqtoolError
from seqtool.models.base import Seq2SeqModel

SCHEMES: dict[str, torch.dtype] = {"int8": torch.qint8}


def quantize_model(model: Seq2SeqModel, scheme: str, device: torch.device) -> Seq2SeqModel:
    """A copy of `model` (on the CPU, eval mode) with its Linear layers dynamically quantized to `scheme`.

    Quantized kernels exist on the CPU only: any other `device` is a SeqtoolError.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown quantization {scheme!r}", f"choose one of {', '.join(SCHEMES)}")
    if device.type != "cpu":
        raise SeqtoolError(
            f"--quantize {scheme} runs on the CPU only, not on {device.type}", "use --device cpu, or drop --quantize"
        )
    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine == "none" and not any(e != "none" for e in engines):
        raise SeqtoolError("this torch build has no quantized CPU kernels", "drop --quantize")
    try:  # deprecated since torch 2.10 in favour of the torchao package; still there in 2.13
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:
        raise SeqtoolError(
            f"this torch ({torch.__version__}) has no torch.ao.quantization",
            "drop --quantize, or use --engine ctranslate2",
        ) from None

    fp32 = copy.deepcopy(model).to("cpu").eval()  # deepcopy keeps a tied output weight tied to its embedding
    with warnings.catch_warnings():  # torch.ao.quantization and its quantized tensors are flagged as deprecated
        warnings.filterwarnings("ignore", message=r".*quantiz.*deprecated")
        # one scale per output row: the rows of a tied output projection (embeddings) differ widely in norm
        return quantize_dynamic(fp32, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
