"""Write a seqtool Transformer checkpoint as an Eole model folder, so that Eole decodes our very weights.

A decoding benchmark between two toolkits' own models compares models as much as decoders: a model that writes
shorter output gets more sentences per second. With the same weights in both, only the decoders differ.

Run it with the Eole venv's Python (torch, safetensors and sentencepiece; seqtool itself is not needed):

    $PEERS_HOME/venv-eole/bin/python tests/benchmarks/to_eole.py CHECKPOINT SPM_MODEL TEMPLATE OUT

TEMPLATE is a step folder of an Eole model trained with the harness's architecture (`config.json`, `vocab.json`,
`model.00.safetensors`; `bench_translate.sh` makes one if needed). Its config, vocabulary and position tables are
kept, every weight is replaced by ours. The protocol's model is the same in both toolkits: pre-norm, interleaved
sinusoidal positions, embeddings scaled by sqrt(d_model), one embedding matrix for source, target and output,
biases everywhere, layer-norm epsilon 1e-5. Two differences remain and are bridged outside the weights:
- our encoder reads `pieces </s>`, Eole's reads `pieces`: the benchmark appends ` </s>` to Eole's input lines;
- our search never emits <pad> or <s>: their output biases here, and those of Eole's vocabulary-padding tokens,
  are set to -1e9.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.00.safetensors"
NEVER = -1e9  # output bias of tokens our search never emits
KEPT_FROM_TEMPLATE = ("pe.pe", "layer_scalar")  # position tables (same formula as ours) and Eole's 1.0 scalars

# Eole's name for each part of a layer, then ours (encoder, decoder)
ENCODER_PARTS = {
    "input_layernorm": "norm1",
    "post_attention_layernorm": "norm2",
}
DECODER_PARTS = {
    "input_layernorm": "norm1",
    "precontext_layernorm": "norm2",
    "context_attn": "cross_attn",
    "post_attention_layernorm": "norm3",
}
COMMON_PARTS = {
    "self_attn.linear_query": "self_attn.q_proj",
    "self_attn.linear_keys": "self_attn.k_proj",
    "self_attn.linear_values": "self_attn.v_proj",
    "self_attn.final_linear": "self_attn.out_proj",
    "context_attn.linear_query": "cross_attn.q_proj",
    "context_attn.linear_keys": "cross_attn.k_proj",
    "context_attn.linear_values": "cross_attn.v_proj",
    "context_attn.final_linear": "cross_attn.out_proj",
    "mlp.gate_up_proj": "ffn.0",
    "mlp.down_proj": "ffn.2",
}


def our_name(eole_name: str) -> str:
    """Our state-dict key for an Eole key of a layer or a final layer norm (KeyError when there is none)."""
    stack, rest = eole_name.split(".", 1)
    if rest.startswith("layer_norm."):
        return f"{stack}_norm.{rest.split('.', 1)[1]}"
    if not rest.startswith("transformer_layers."):
        raise KeyError(eole_name)
    _, index, part = rest.split(".", 2)
    module, param = part.rsplit(".", 1)
    parts = ENCODER_PARTS if stack == "encoder" else DECODER_PARTS
    return f"{stack}_layers.{index}.{COMMON_PARTS.get(module) or parts[module]}.{param}"


def vocabulary_map(eole_tokens: list[str], sp: spm.SentencePieceProcessor, pad_token: str, pad_id: int) -> list[int]:
    """Our id for each Eole token, -1 for Eole's vocabulary padding (tokens the SentencePiece model lacks)."""
    ids = []
    for token in eole_tokens:
        if token == pad_token:
            ids.append(pad_id)
            continue
        piece_id = sp.piece_to_id(token)
        ids.append(piece_id if sp.id_to_piece(piece_id) == token else -1)
    return ids


def convert(checkpoint: Path, spm_model: Path, template: Path, out: Path) -> dict[str, int]:
    """Write OUT from TEMPLATE with our weights; returns counts for the log."""
    ours = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    pad_id = sp.pad_id() if sp.pad_id() >= 0 else sp.get_piece_size()  # seqtool's rule (seqtool/tokenizer.py)
    vocab = json.loads((template / "vocab.json").read_text(encoding="utf-8"))
    if vocab["src"] != vocab["tgt"]:
        raise SystemExit("to_eole: the template's vocabularies are not shared (the protocol's model shares them)")
    specials = vocab["specials"]
    index = vocabulary_map(vocab["tgt"], sp, specials["pad_token"], pad_id)
    embedding = ours["tgt_embed.weight"].float()
    if embedding.size(0) != pad_id + 1 or max(index) >= embedding.size(0):
        raise SystemExit(f"to_eole: {spm_model} does not match the checkpoint's vocabulary ({embedding.size(0)} rows)")
    known = torch.tensor([i >= 0 for i in index])
    rows = torch.tensor([max(i, 0) for i in index])

    weights = load_file(str(template / WEIGHTS))
    used = {"tgt_embed.weight", "src_embed.weight", "output.weight"}  # one shared, tied matrix
    for name, tensor in weights.items():
        if name.endswith(KEPT_FROM_TEMPLATE):
            continue
        if name == "src_emb.embeddings.weight":
            new = embedding[rows] * known[:, None]
        elif name == "generator.bias":
            new = ours["output.bias"].float()[rows]
            banned = ~known | torch.tensor([i in (pad_id, sp.bos_id()) for i in index])
            new = new.masked_fill(banned, NEVER)
        else:
            key = our_name(name)
            new = ours[key].float()
            used.add(key)
        if new.shape != tensor.shape:
            raise SystemExit(f"to_eole: {name} has shape {tuple(tensor.shape)} in Eole, ours {tuple(new.shape)}")
        weights[name] = new.contiguous()
    used.add("output.bias")
    left = sorted(set(ours) - used)
    if left:
        raise SystemExit(f"to_eole: weights with no place in the Eole model: {', '.join(left)}")

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("config.json", "vocab.json"):
        shutil.copy2(template / name, tmp / name)
    save_file(weights, str(tmp / WEIGHTS))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {"tensors": len(weights), "tokens": len(index), "unmapped_tokens": int((~known).sum())}


def main(argv: list[str]) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a seqtool checkpoint (.pt) of a Transformer run")
    parser.add_argument("spm_model", type=Path, help="the run's SentencePiece model (joint vocabulary)")
    parser.add_argument("template", type=Path, help="an Eole step folder of the harness's architecture")
    parser.add_argument("out", type=Path, help="the Eole model folder to write (replaced if it exists)")
    args = parser.parse_args(argv)
    print(json.dumps(convert(args.checkpoint, args.spm_model, args.template, args.out)))


if __name__ == "__main__":
    main(sys.argv[1:])
