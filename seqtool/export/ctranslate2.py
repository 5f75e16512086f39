"""Export a seqtool Transformer as a CTranslate2 model directory (written from our state dict with `ctranslate2.specs`).

The mapping, sub-layer by sub-layer (CTranslate2 keeps each sub-layer's layer norm inside that sub-layer's spec and
applies it before the sub-layer when pre-norm, after the residual sum when post-norm, as we do):

    ours                                        CTranslate2 spec
    src_embed / tgt_embed (× sqrt(d_model))     encoder.embeddings[0] / decoder.embeddings (scale_embeddings)
    sinusoidal_positions (sin even, cos odd)    {encoder,decoder}.position_encodings.encodings (our table, explicit)
    encoder layer: self_attn q/k/v, out_proj    layer.self_attention.linear[0] = fused [q; k; v], linear[1] = out
                   norm1, norm2                 layer.self_attention.layer_norm, layer.ffn.layer_norm
                   ffn.0, ffn.2                 layer.ffn.linear_0, linear_1
    decoder layer: self_attn (as above), norm1  layer.self_attention (fused qkv), its layer_norm
                   cross_attn q, k/v, out       layer.attention.linear[0] = q, linear[1] = fused [k; v], linear[2]
                   norm2, norm3, ffn            layer.attention.layer_norm, layer.ffn.layer_norm, layer.ffn.linear_*
    encoder_norm / decoder_norm (pre-norm)      {encoder,decoder}.layer_norm
    output (weight tied or not, bias)           decoder.projection

Vocabulary: the SentencePiece pieces by id (<unk>=0 <s>=1 </s>=2), plus a token for our padding id when the
SentencePiece model has no <pad> piece, so that the vocabulary is exactly as long as our embedding matrix.
The source gets </s> appended by CTranslate2 itself (config `add_source_eos`), as our engine does.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from seqtool import __version__
from seqtool.atomic import current_umask, fsync_path
from seqtool.config import Config, TransformerConfig
from seqtool.errors import CheckpointError, ConfigError, SeqtoolError

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor, nn

    from seqtool.models.transformer import Transformer
    from seqtool.tokenizer import SentencePieceModel, Tokenizer

QUANTIZATIONS = ("int8", "int8_float32", "float32", "bfloat16")
INSTALL_HINT = "pip install 'seqtool[ct2]'"
METADATA_FILE = "seqtool.json"  # what we exported, next to CTranslate2's own files
MIN_POSITIONS = 1024  # rows of the exported position table at least (CTranslate2 has no positions beyond it)
PAD_TOKEN = "<pad>"
LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which our models use


def import_ctranslate2() -> ModuleType:
    """The `ctranslate2` module, or a SeqtoolError naming the extra to install.

    Before the first import, OMP_WAIT_POLICY defaults to PASSIVE (unless the user set it): CTranslate2's OpenMP
    threads otherwise spin at every barrier, and on a machine whose cores are busy with other work a float32 beam
    search with 2 threads on 2 cores ran 30-70x slower (measured: 70 s instead of 1 s for one batch).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when CTranslate2's libgomp loads
    try:
        import ctranslate2
    except ImportError:
        raise SeqtoolError("CTranslate2 is not installed", INSTALL_HINT) from None
    return ctranslate2


def vocabulary(sp: SentencePieceModel) -> list[str]:
    """CTranslate2 tokens by id: the SentencePiece pieces, then a padding token when the model has no pad piece."""
    pieces = [sp.processor.id_to_piece(i) for i in range(sp.processor.get_piece_size())]
    pad = PAD_TOKEN
    while pad in pieces:  # a user-defined piece could already be called <pad> without being the padding id
        pad = f"<{pad[1:-1]}_>"
    return pieces + [pad] * (sp.vocab_size - len(pieces))


@dataclass(frozen=True)
class ExportResult:
    """What `export_ctranslate2` wrote."""

    output: Path
    checkpoint: Path
    quantization: str
    bytes: int


def _array(tensor: Tensor) -> np.ndarray:
    return tensor.detach().to("cpu").float().contiguous().numpy()


def _linear(spec: Any, layers: list[nn.Linear]) -> None:
    """Fill a LinearSpec from one Linear, or from several fused along the output dimension (q, k, v -> qkv)."""
    import torch

    spec.weight = _array(torch.cat([layer.weight for layer in layers], 0))
    if all(layer.bias is not None for layer in layers):
        spec.bias = _array(torch.cat([layer.bias for layer in layers], 0))


def _layer_norm(spec: Any, norm: nn.LayerNorm) -> None:
    spec.gamma = _array(norm.weight)
    spec.beta = _array(norm.bias)


def _ffn(spec: Any, ffn: nn.Sequential, norm: nn.LayerNorm) -> None:
    _layer_norm(spec.layer_norm, norm)
    _linear(spec.linear_0, [ffn[0]])
    _linear(spec.linear_1, [ffn[2]])


def _self_attention(spec: Any, attn: Any, norm: nn.LayerNorm) -> None:
    _layer_norm(spec.layer_norm, norm)
    _linear(spec.linear[0], [attn.q_proj, attn.k_proj, attn.v_proj])
    _linear(spec.linear[1], [attn.out_proj])


def _cross_attention(spec: Any, attn: Any, norm: nn.LayerNorm) -> None:
    _layer_norm(spec.layer_norm, norm)
    _linear(spec.linear[0], [attn.q_proj])
    _linear(spec.linear[1], [attn.k_proj, attn.v_proj])
    _linear(spec.linear[2], [attn.out_proj])


def build_spec(model: Transformer, pre_norm: bool, activation: str, tokenizer: Tokenizer, positions: int) -> Any:
    """A validated `ctranslate2.specs.TransformerSpec` holding the model's weights and vocabularies."""
    from torch import nn

    from seqtool.models.transformer import sinusoidal_positions

    ct2 = import_ctranslate2()
    specs = ct2.specs
    activations = {"relu": specs.Activation.RELU, "gelu": specs.Activation.GELU}  # nn.GELU is the exact (erf) GELU
    heads = model.encoder_layers[0].self_attn.heads
    common = {"pre_norm": pre_norm, "activation": activations[activation]}
    encoder = specs.TransformerEncoderSpec(len(model.encoder_layers), heads, **common)
    decoder = specs.TransformerDecoderSpec(len(model.decoder_layers), heads, **common)
    table = _array(sinusoidal_positions(positions, model.d_model))  # (positions, d_model)

    encoder.embeddings[0].weight = _array(model.src_embed.weight)
    encoder.scale_embeddings = True
    encoder.position_encodings.encodings = table
    for spec, layer in zip(encoder.layer, model.encoder_layers, strict=True):
        _self_attention(spec.self_attention, layer.self_attn, layer.norm1)
        _ffn(spec.ffn, layer.ffn, layer.norm2)

    decoder.embeddings.weight = _array(model.tgt_embed.weight)
    decoder.scale_embeddings = True
    decoder.position_encodings.encodings = table
    for spec, layer in zip(decoder.layer, model.decoder_layers, strict=True):
        _self_attention(spec.self_attention, layer.self_attn, layer.norm1)
        _cross_attention(spec.attention, layer.cross_attn, layer.norm2)
        _ffn(spec.ffn, layer.ffn, layer.norm3)
    _linear(decoder.projection, [model.output])
    if pre_norm:
        assert isinstance(model.encoder_norm, nn.LayerNorm) and isinstance(model.decoder_norm, nn.LayerNorm)
        _layer_norm(encoder.layer_norm, model.encoder_norm)
        _layer_norm(decoder.layer_norm, model.decoder_norm)

    spec = specs.TransformerSpec(encoder, decoder)
    src_vocab, tgt_vocab = vocabulary(tokenizer.src), vocabulary(tokenizer.tgt)
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = tgt_vocab[:3]
    spec.config.decoder_start_token = tgt_vocab[tokenizer.specials.bos]
    spec.config.add_source_eos = True  # our encoder sees `pieces </s>`
    spec.config.layer_norm_epsilon = LAYER_NORM_EPSILON
    spec.register_source_vocabulary(src_vocab)
    spec.register_target_vocabulary(tgt_vocab)
    spec.validate()
    return spec


def export_ctranslate2(
    run_dir: Path, output: Path, quantization: str = "float32", checkpoint: str = "best", overwrite: bool = False
) -> ExportResult:
    """Write the run's Transformer as a CTranslate2 model directory `output`, atomically (temp dir, then rename).

    An existing `output` is refused unless `overwrite` (and even then only when it is empty or a CTranslate2 model).
    """
    import torch

    from seqtool.rundir import load_for_inference, resolve_checkpoint

    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {quantization!r}", f"choose one of {', '.join(QUANTIZATIONS)}")
    run, cfg = transformer_run(run_dir, "the CTranslate2 export")
    _check_output(output, overwrite)
    import_ctranslate2()  # fail before loading the checkpoint when the extra is missing
    path = resolve_checkpoint(run, checkpoint)
    from seqtool.models.transformer import Transformer

    model, tokenizer, _, meta = load_for_inference(run.root, checkpoint, torch.device("cpu"))
    assert isinstance(model, Transformer) and isinstance(cfg.model, TransformerConfig)
    positions = max(cfg.model.max_positions, MIN_POSITIONS)
    with torch.no_grad():
        spec = build_spec(model, cfg.model.pre_norm, cfg.model.activation, tokenizer, positions)
    spec.optimize(quantization=quantization)
    metadata = {
        "seqtool_version": __version__,
        "run_dir": str(run.root.resolve()),
        "checkpoint": str(path.resolve()),
        "step": meta.get("step"),
        "quantization": quantization,
        "positions": positions,
        "pad_id": tokenizer.specials.pad,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp creates 0700; give the directory the usual permissions
        spec.save(str(tmp))
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        _replace_dir(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in output.iterdir() if f.is_file())
    return ExportResult(output, path, quantization, size)


def _check_output(output: Path, overwrite: bool) -> None:
    """Refuse an existing output unless --overwrite; never replace something that is not an (empty or) CT2 dir."""
    if not output.exists() and not output.is_symlink():
        return
    if not overwrite:
        raise SeqtoolError(f"output directory {output} exists", "pass --overwrite to replace it, or choose another -o")
    if not output.is_dir() or output.is_symlink():
        raise SeqtoolError(f"{output} exists and is not a directory; not replacing it", "choose another -o")
    if any(output.iterdir()) and not (output / "model.bin").is_file():
        raise SeqtoolError(
            f"{output} is not a CTranslate2 model directory (no model.bin); not replacing it", "choose another -o"
        )


def _replace_dir(tmp: Path, output: Path) -> None:
    """Move the finished temp dir to `output`; an old `output` is moved aside first and deleted after."""
    if not output.exists():
        os.rename(tmp, output)
        return
    old = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".old"))
    os.rename(output, old / "model")
    try:
        os.rename(tmp, output)
    except OSError:
        os.rename(old / "model", output)  # put the old model back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def transformer_run(run_dir: str | Path, what: str) -> tuple[Any, Config]:
    """The run directory and its config, refusing runs whose model is not a Transformer (`what` needs one)."""
    from seqtool.rundir import RunDir, read_run_config

    run = RunDir(Path(run_dir))
    cfg = read_run_config(run)
    if cfg.model.kind != "transformer":
        raise ConfigError(
            f"{run.root} holds an {cfg.model.kind} model; {what} supports model.kind: transformer only",
            "use --engine torch (optionally with --quantize int8)",
        )
    return run, cfg


def _fsync_tree(root: Path) -> None:
    for path in [*root.iterdir(), root]:
        fsync_path(path)


def check_exported(model_dir: Path, tokenizer: Tokenizer) -> dict[str, Any]:
    """The export's metadata, after checking that `model_dir` is a CTranslate2 export of a model with this tokenizer."""
    if not (model_dir / "model.bin").is_file():
        raise CheckpointError(f"{model_dir} is not a CTranslate2 model directory (no model.bin)")
    files = {"shared": ["shared"], "split": ["source", "target"]}
    names = files["shared"] if (model_dir / "shared_vocabulary.json").is_file() else files["split"]
    found = [json.loads((model_dir / f"{name}_vocabulary.json").read_text(encoding="utf-8")) for name in names]
    expected = [vocabulary(tokenizer.src), vocabulary(tokenizer.tgt)]
    if found[0] != expected[0] or found[-1] != expected[1]:
        raise CheckpointError(
            f"{model_dir} was exported with another vocabulary than this run's tokenizer",
            "export this run again: seqtool export RUN_DIR --format ctranslate2 -o DIR --overwrite",
        )
    meta_file = model_dir / METADATA_FILE
    return json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
