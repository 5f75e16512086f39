"""The Transformer encoder–decoder (Vaswani et al., 2017) with pre- or post-norm and a key/value cache for decoding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seqtool.config import TransformerConfig
from seqtool.models.attention import MultiHeadAttention
from seqtool.models.base import DecoderState, EncoderOutput, Seq2SeqModel, select_rows
from seqtool.models.dropout import Dropout
from seqtool.tokenizer import SpecialIds

_DEFAULTS = TransformerConfig()  # the defaults live in config.py only

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}

KVPair = tuple[Tensor, Tensor]


def sinusoidal_positions(length: int, dim: int, start: int = 0) -> Tensor:
    """Sinusoidal position encodings (length, dim) for positions start .. start+length-1 (sin on even, cos on odd)."""
    position = torch.arange(start, start + length, dtype=torch.float32)[:, None]  # (length, 1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (ceil(dim/2),)
    angles = position * frequency  # (length, ceil(dim/2))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


def _feed_forward(d_model: int, ffn_dim: int, activation: str) -> nn.Sequential:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    return nn.Sequential(nn.Linear(d_model, ffn_dim), ACTIVATIONS[activation](), nn.Linear(ffn_dim, d_model))


class _ResidualLayer(nn.Module):
    """Residual sub-layer wiring: pre-norm `x + f(LN(x))` or post-norm `LN(x + f(x))`, dropout on f's output."""

    def __init__(self, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def _sublayer_input(self, x: Tensor, norm: nn.LayerNorm) -> Tensor:
        return norm(x) if self.pre_norm else x

    def _sublayer_output(self, x: Tensor, y: Tensor, norm: nn.LayerNorm) -> Tensor:
        return x + self.dropout(y) if self.pre_norm else norm(x + self.dropout(y))


class EncoderLayer(_ResidualLayer):
    """Self-attention then feed-forward: Z = MHA(X) + X, H = FFN(Z) + Z (plus layer norms)."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        ffn_dim: int,
        dropout: float,
        attention_dropout: float,
        activation: str,
        pre_norm: bool,
    ) -> None:
        super().__init__(dropout, pre_norm)
        self.self_attn = MultiHeadAttention(d_model, heads, attention_dropout)
        self.ffn = _feed_forward(d_model, ffn_dim, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, src_mask: Tensor) -> Tensor:
        """x (batch, src_len, d_model), src_mask (batch, src_len) True = real -> (batch, src_len, d_model)."""
        h = self._sublayer_input(x, self.norm1)
        x = self._sublayer_output(x, self.self_attn(h, h, h, src_mask), self.norm1)
        return self._sublayer_output(x, self.ffn(self._sublayer_input(x, self.norm2)), self.norm2)


class DecoderLayer(_ResidualLayer):
    """Causal self-attention, cross-attention over the encoder output, feed-forward (each with residual + norm)."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        ffn_dim: int,
        dropout: float,
        attention_dropout: float,
        activation: str,
        pre_norm: bool,
    ) -> None:
        super().__init__(dropout, pre_norm)
        self.self_attn = MultiHeadAttention(d_model, heads, attention_dropout)
        self.cross_attn = MultiHeadAttention(d_model, heads, attention_dropout)
        self.ffn = _feed_forward(d_model, ffn_dim, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def _self_attention_block(self, x: Tensor, past: KVPair | None) -> tuple[Tensor, KVPair]:
        """Causal self-attention; with `past` keys/values (incremental decoding) the new ones are appended."""
        h = self._sublayer_input(x, self.norm1)
        q, k, v = self.self_attn.project_qkv(h)  # (batch, heads, tgt_len, head_dim)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # With a cache the new positions are the last ones, so the (bottom-right aligned) causal mask is still right.
        return self._sublayer_output(x, self.self_attn.attend_projected(q, k, v, causal=True), self.norm1), (k, v)

    def forward(
        self, x: Tensor, memory_kv: KVPair, src_mask: Tensor, past: KVPair | None = None, group: int = 1
    ) -> tuple[Tensor, KVPair]:
        """x (batch, tgt_len, d_model); memory_kv: cross-attention keys/values from `cross_attn.project_kv(memory)`.

        With `group` > 1 (beam search, tgt_len 1), rows come in groups of `group` beams of one sentence and
        memory_kv/src_mask hold one row per sentence: the beams attend as `group` queries of that sentence, so the
        encoder keys/values are neither copied per beam nor reordered when beams are.
        Returns the output (batch, tgt_len, d_model) and the self-attention keys/values (past ones included).
        """
        x, kv = self._self_attention_block(x, past)
        h = self._sublayer_input(x, self.norm2)
        if group > 1:
            rows, length, d_model = h.shape
            h = h.reshape(rows // group, group * length, d_model)
        cross = self.cross_attn.attend(h, *memory_kv, src_mask).view_as(x)
        x = self._sublayer_output(x, cross, self.norm2)
        return self._sublayer_output(x, self.ffn(self._sublayer_input(x, self.norm3)), self.norm3), kv

    def cross_attention_weights(
        self, x: Tensor, memory: Tensor, src_mask: Tensor, average_heads: bool = True
    ) -> Tensor:
        """Cross-attention weights of this layer for input x: (batch, tgt_len, src_len) averaged over heads, or
        (batch, heads, tgt_len, src_len)."""
        x, _ = self._self_attention_block(x, None)
        query = self._sublayer_input(x, self.norm2)
        return self.cross_attn.weights(query, memory, src_mask, average_heads=average_heads)


class Transformer(Seq2SeqModel):
    """Transformer encoder–decoder with sinusoidal positions, optional shared/tied embeddings and a KV cache.

    Decoder state (tensors batch-first): `pos` (int, the next target position), `beam` (int, rows per sentence),
    `src_mask` (sentences, src_len), and `layers`: one dict per decoder layer with `self_k`/`self_v` (rows, heads,
    decoded_len, head_dim) and `cross_k`/`cross_v` (sentences, heads, src_len, head_dim). Rows = sentences × beam:
    the encoder side is kept once per sentence (see `expand_state` and `DecoderLayer.forward`'s `group`).
    """

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        specials: SpecialIds,
        d_model: int = _DEFAULTS.d_model,
        heads: int = _DEFAULTS.heads,
        ffn_dim: int = _DEFAULTS.ffn_dim,
        encoder_layers: int = _DEFAULTS.encoder_layers,
        decoder_layers: int = _DEFAULTS.decoder_layers,
        dropout: float = _DEFAULTS.dropout,
        attention_dropout: float = _DEFAULTS.attention_dropout,
        activation: str = _DEFAULTS.activation,
        pre_norm: bool = _DEFAULTS.pre_norm,
        share_embeddings: bool = _DEFAULTS.share_embeddings,
        tie_output: bool = _DEFAULTS.tie_output,
        max_positions: int = _DEFAULTS.max_positions,
    ) -> None:
        super().__init__()
        if share_embeddings and src_vocab != tgt_vocab:
            raise ValueError(
                f"share_embeddings needs equal source and target vocabularies (got {src_vocab} and {tgt_vocab})"
            )
        self.specials = specials
        self.d_model = d_model
        self.embed_scale = math.sqrt(d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model, padding_idx=specials.pad)
        self.src_embed = (
            self.tgt_embed if share_embeddings else nn.Embedding(src_vocab, d_model, padding_idx=specials.pad)
        )
        self.register_buffer("positions", sinusoidal_positions(max_positions, d_model), persistent=False)
        self.dropout = Dropout(dropout)
        layer_args = (d_model, heads, ffn_dim, dropout, attention_dropout, activation, pre_norm)
        self.encoder_layers = nn.ModuleList(EncoderLayer(*layer_args) for _ in range(encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(*layer_args) for _ in range(decoder_layers))
        # Pre-norm leaves the residual stream unnormalised, so each stack ends with a layer norm.
        self.encoder_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.output = nn.Linear(d_model, tgt_vocab)
        self._reset_parameters()
        if tie_output:
            self.output.weight = self.tgt_embed.weight

    def _reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for embed in dict.fromkeys((self.src_embed, self.tgt_embed)):  # ordered, shared counted once
            nn.init.normal_(embed.weight, mean=0.0, std=self.d_model**-0.5)
            with torch.no_grad():
                embed.weight[self.specials.pad].zero_()

    def _embed(self, tokens: Tensor, embed: nn.Embedding, start: int = 0) -> Tensor:
        """Scaled embeddings plus positions start .. start+len-1: (batch, len) -> (batch, len, d_model)."""
        end = start + tokens.size(1)
        if end <= self.positions.size(0):
            positions = self.positions[start:end]
        else:  # longer than max_positions: compute on the fly (the buffer keeps its size, so all DDP ranks agree)
            positions = sinusoidal_positions(end - start, self.d_model, start).to(self.positions.device)
        return self.dropout(embed(tokens) * self.embed_scale + positions)

    def encode(self, src: Tensor) -> EncoderOutput:
        """Encode a padded source batch (batch, src_len) into memory (batch, src_len, d_model)."""
        src_mask = src != self.specials.pad  # (batch, src_len)
        x = self._embed(src, self.src_embed)
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return EncoderOutput(memory=self.encoder_norm(x), src_mask=src_mask)

    def features(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced decoder output (batch, tgt_len, d_model), final norm applied."""
        enc = self.encode(src)
        x = self._embed(tgt_in, self.tgt_embed)  # (batch, tgt_len, d_model)
        for layer in self.decoder_layers:
            x, _ = layer(x, layer.cross_attn.project_kv(enc.memory), enc.src_mask)
        return self.decoder_norm(x)

    def init_state(self, enc: EncoderOutput) -> DecoderState:
        """Cross-attention keys/values of every layer (computed once) and empty self-attention caches."""
        layers = []
        for layer in self.decoder_layers:
            cross_k, cross_v = layer.cross_attn.project_kv(enc.memory)  # (batch, heads, src_len, head_dim)
            empty = cross_k.new_zeros(cross_k.size(0), cross_k.size(1), 0, cross_k.size(3))
            layers.append({"self_k": empty, "self_v": empty, "cross_k": cross_k, "cross_v": cross_v})
        return {"pos": 0, "beam": 1, "src_mask": enc.src_mask, "layers": layers}

    _SENTENCE_KEYS = ("cross_k", "cross_v")

    def expand_state(self, state: DecoderState, rows: Tensor, beam: int) -> DecoderState:
        """Repeat the per-row caches `beam` times; the encoder side stays one row per sentence."""
        if state["beam"] != 1:
            raise ValueError("expand_state: the state is already expanded")
        per_row = rows.repeat_interleave(beam)  # one copy of each cache row per beam, in a single index_select
        layers = [
            {key: t.index_select(0, rows if key in self._SENTENCE_KEYS else per_row) for key, t in cache.items()}
            for cache in state["layers"]
        ]
        return {**state, "beam": beam, "src_mask": state["src_mask"].index_select(0, rows), "layers": layers}

    def reorder_state(self, state: DecoderState, index: Tensor) -> DecoderState:
        """Select rows (see `Seq2SeqModel.reorder_state`); with beams the encoder side is only touched when sentences
        leave the batch, and then by sentence."""
        beam = state["beam"]
        if beam == 1:
            return select_rows(state, index)
        old_rows = state["layers"][0]["self_k"].size(0) if state["layers"] else index.numel()
        # the contract: when the number of rows is kept, sentence i stays sentence i
        sentences = None if index.numel() == old_rows else index[::beam] // beam
        layers = []
        for cache in state["layers"]:
            layer = {}
            for key, t in cache.items():
                if key not in self._SENTENCE_KEYS:
                    layer[key] = t.index_select(0, index)
                else:
                    layer[key] = t if sentences is None else t.index_select(0, sentences)
            layers.append(layer)
        src_mask = state["src_mask"] if sentences is None else state["src_mask"].index_select(0, sentences)
        return {**state, "src_mask": src_mask, "layers": layers}

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """Feed tokens (batch,) at position state["pos"]; returns logits (batch, tgt_vocab) and the new state."""
        x = self._embed(tokens[:, None], self.tgt_embed, state["pos"])  # (batch, 1, d_model)
        new_layers = []
        for layer, cache in zip(self.decoder_layers, state["layers"], strict=True):
            x, (k, v) = layer(
                x,
                (cache["cross_k"], cache["cross_v"]),
                state["src_mask"],
                (cache["self_k"], cache["self_v"]),
                state["beam"],
            )
            new_layers.append({**cache, "self_k": k, "self_v": v})
        logits = self.output(self.decoder_norm(x[:, 0]))
        return logits, {**state, "pos": state["pos"] + 1, "layers": new_layers}

    @torch.no_grad()
    def attention_weights(self, src: Tensor, tgt_in: Tensor, layer: int = -1, head: int | None = None) -> Tensor:
        """Cross-attention weights (batch, tgt_len, src_len) of decoder `layer` (default: the last), of one `head`
        or averaged over heads."""
        layers = list(self.decoder_layers)
        if not -len(layers) <= layer < len(layers):  # not wrapped around: layer 3 of 2 is a mistake, not layer 1
            raise ValueError(f"layer must be in {-len(layers)}..{len(layers) - 1}, got {layer}")
        index = layer % len(layers)
        if head is not None and not 0 <= head < layers[index].cross_attn.heads:
            raise ValueError(f"head must be in 0..{layers[index].cross_attn.heads - 1}, got {head}")
        enc = self.encode(src)
        x = self._embed(tgt_in, self.tgt_embed)
        for lower in layers[:index]:
            x, _ = lower(x, lower.cross_attn.project_kv(enc.memory), enc.src_mask)
        weights = layers[index].cross_attention_weights(x, enc.memory, enc.src_mask, average_heads=head is None)
        return weights if head is None else weights[:, head]
