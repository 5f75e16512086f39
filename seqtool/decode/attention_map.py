"""The cross-attention of one translation: which source pieces each output piece looked at."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from seqtool.data.batching import pad_sequences
from seqtool.decode.search import SearchConfig
from seqtool.decode.translate import clean_line, translate_ids
from seqtool.errors import DataError
from seqtool.models.base import Seq2SeqModel
from seqtool.tokenizer import Tokenizer


@dataclass
class AttentionMap:
    """Attention weights (one row per output piece, </s> included; one column per source piece, </s> included)."""

    translation: str
    src_pieces: list[str]
    tgt_pieces: list[str]
    weights: list[list[float]]
    title: str = ""  # the translation, and for a Transformer which layer and head(s) the weights are from


def attention_map(
    model: Seq2SeqModel,
    tokenizer: Tokenizer,
    sentence: str,
    search_cfg: SearchConfig,
    layer: int = -1,
    head: int | None = None,
) -> AttentionMap:
    """Translate `sentence` and return the cross-attention weights of the translation (teacher-forced on it)."""
    src_ids = tokenizer.src.encode([clean_line(sentence)])[0]
    if not src_ids:
        raise DataError("the sentence is empty", "give a sentence to translate, in quotes")
    hyps = translate_ids(model, [src_ids], search_cfg)[0]
    out_ids = hyps[0].tokens if hyps else []
    specials = model.specials
    device = next(model.parameters()).device
    src = pad_sequences([src_ids], specials.pad, suffix=specials.eos).to(device)
    tgt_in = pad_sequences([out_ids], specials.pad, prefix=specials.bos).to(device)
    try:
        weights = model.attention_weights(src, tgt_in, layer=layer, head=head)
    except ValueError as exc:  # e.g. a head index out of range
        raise DataError(str(exc)) from None
    if weights is None:
        raise DataError("this model has no attention to show (an RNN with attention: none)")
    processor = tokenizer.src.processor
    src_pieces = [processor.id_to_piece(i) for i in src_ids] + ["</s>"]
    tgt_processor = tokenizer.tgt.processor
    tgt_pieces = [tgt_processor.id_to_piece(i) for i in out_ids] + ["</s>"]
    return AttentionMap(
        translation=tokenizer.tgt.decode([out_ids])[0],
        src_pieces=src_pieces,
        tgt_pieces=tgt_pieces,
        weights=weights[0].to(torch.float32).tolist(),
    )


def run_attention_map(
    run_dir: str | Path,
    sentence: str,
    *,
    beam: int | None = None,
    checkpoint: str = "best",
    layer: int = -1,
    head: int | None = None,
) -> AttentionMap:
    """`attention_map` of a run's model (fp32 on the CPU), searching with the run's decode settings (and `beam`)."""
    from seqtool.decode import DecodeOptions, load_translator
    from seqtool.decode.translate import Translator

    translator = load_translator(run_dir, DecodeOptions(checkpoint=checkpoint, device="cpu", quantize="none"))
    assert isinstance(translator, Translator)
    cfg = translator.config
    search_cfg = SearchConfig.from_decode(cfg.decode, beam=beam, nbest=1)
    amap = attention_map(translator.model, translator.tokenizer, sentence, search_cfg, layer, head)
    which = ""
    if cfg.model.kind == "transformer":
        layers = cfg.model.decoder_layers
        which = f" — decoder layer {layer % layers + 1} of {layers}, " + (
            f"head {head + 1} of {cfg.model.heads}" if head is not None else "heads averaged"
        )
    amap.title = f"{amap.translation}{which}"
    return amap
