"""SentencePiece tokenizers: training (joint or per side), loading, encoding and decoding.

The special-symbol ids are fixed here and nowhere else: <unk>=0, <s>=1, </s>=2, <pad>=3.
A model trained elsewhere without a <pad> piece (e.g. SentencePiece's defaults) gets pad = piece count,
one id past its pieces, so any unigram/BPE model with <unk>=0 <s>=1 </s>=2 can be used.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from seqtool.config import Config
from seqtool.errors import DataError, SeqtoolError

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3


def language_tag(language: str) -> str:
    """The piece that asks a multilingual model for a target language: `<2fr>` (Johnson et al., 2017)."""
    return f"<2{language}>"


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special symbols, owned by the tokenizer (data and models import them from here)."""

    pad: int
    bos: int
    eos: int
    unk: int


_DEFAULTS = Config()  # the defaults live in config.py only


@dataclass(frozen=True)
class TokenizerSpec:
    """How to train a SentencePiece model (defaults: the config's `tokenizer` section and `seed`)."""

    vocab_size: int = _DEFAULTS.tokenizer.vocab_size
    model_type: str = _DEFAULTS.tokenizer.type  # unigram | bpe
    character_coverage: float = _DEFAULTS.tokenizer.character_coverage
    input_sentence_size: int = _DEFAULTS.tokenizer.input_sentence_size
    seed: int = _DEFAULTS.seed
    user_symbols: tuple[str, ...] = ()  # pieces kept whole wherever they occur (language tags)


def train_sentencepiece(inputs: Sequence[str | Path], output_prefix: str | Path, spec: TokenizerSpec) -> Path:
    """Train a SentencePiece model on the given text files; writes PREFIX.model and PREFIX.vocab atomically.

    Returns the path of the .model file.
    """
    for name in inputs:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"file not found: {path}" if not path.exists() else f"not a file: {path}")
    output_prefix = Path(output_prefix)
    output_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(spec.seed)
    with tempfile.TemporaryDirectory(dir=output_prefix.parent, prefix=".spm-") as tmp:
        tmp_prefix = Path(tmp) / "spm"
        try:
            with open(os.devnull, "w") as quiet:
                spm.SentencePieceTrainer.train(
                    input=[str(p) for p in inputs],
                    model_prefix=str(tmp_prefix),
                    vocab_size=spec.vocab_size,
                    model_type=spec.model_type,
                    character_coverage=spec.character_coverage,
                    input_sentence_size=spec.input_sentence_size,
                    shuffle_input_sentence=True,
                    unk_id=UNK_ID,
                    bos_id=BOS_ID,
                    eos_id=EOS_ID,
                    pad_id=PAD_ID,
                    num_threads=os.cpu_count() or 1,
                    user_defined_symbols=list(spec.user_symbols),
                    logstream=quiet,
                )
        except RuntimeError as exc:
            raise _plain_spm_error(str(exc), spec) from None
        model = output_prefix.with_name(output_prefix.name + ".model")
        vocab = output_prefix.with_name(output_prefix.name + ".vocab")
        shutil.move(str(tmp_prefix) + ".vocab", vocab)
        os.replace(str(tmp_prefix) + ".model", model)  # the .model last: its presence means the pair is complete
    return model


def train_tokenizers(
    inputs: Sequence[str | Path],
    output_prefix: str | Path,
    spec: TokenizerSpec,
    separate: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """`seqtool tokenizer train`: one model over all `inputs` (PREFIX.model), or with `separate` one per input file
    (PREFIX.<extension>.model; PREFIX.<index>.model when extensions repeat). Returns the .model paths, in order.

    Existing model files are refused (all of them checked before any training) unless `overwrite`.
    """
    paths = [Path(p) for p in inputs]
    prefix = Path(output_prefix)
    if separate:
        suffixes = [p.suffix.lstrip(".") or str(i) for i, p in enumerate(paths)]
        if len(set(suffixes)) < len(suffixes):
            suffixes = [str(i) for i in range(len(paths))]
        jobs = [([p], Path(f"{prefix}.{s}")) for p, s in zip(paths, suffixes, strict=True)]
    else:
        jobs = [(paths, prefix)]
    for _, job_prefix in jobs:
        model_file = Path(f"{job_prefix}.model")
        if model_file.exists() and not overwrite:
            raise DataError(f"output file {model_file} exists", "pass --overwrite to replace it, or choose another -o")
    return [train_sentencepiece(files, job_prefix, spec) for files, job_prefix in jobs]


def _plain_spm_error(message: str, spec: TokenizerSpec) -> SeqtoolError:
    too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
    if too_high:
        return DataError(
            f"vocabulary size {too_high.group(1)} is too large for this data: at most {too_high.group(2)} pieces",
            f"use --vocab-size {too_high.group(2)} or less (tokenizer.vocab_size in a config), or more text",
        )
    if "Vocabulary size is smaller than required_chars" in message:
        return DataError(
            f"vocabulary size {spec.vocab_size} is smaller than the number of distinct characters to cover",
            "raise the vocabulary size or lower the character coverage",
        )
    detail = re.sub(r"^\w+: \S+\(\d+\) (\[.*?\] )?", "", message.strip().splitlines()[0])
    return DataError(f"SentencePiece training failed: {detail}")


class SentencePieceModel:
    """One loaded SentencePiece model with seqtool's special ids."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"tokenizer model not found: {path}" if not path.exists() else f"not a file: {path}")
        processor = spm.SentencePieceProcessor()
        try:
            processor.load(str(path))
        except (RuntimeError, OSError):
            raise DataError(f"not a SentencePiece model: {path}") from None
        if (processor.unk_id(), processor.bos_id(), processor.eos_id()) != (UNK_ID, BOS_ID, EOS_ID):
            raise DataError(
                f"{path}: expected <unk>=0 <s>=1 </s>=2, found {processor.unk_id()}, "
                f"{processor.bos_id()}, {processor.eos_id()}",
                "train the tokenizer with `seqtool tokenizer train`",
            )
        self.path = path
        self.processor = processor
        pieces = processor.get_piece_size()
        self.pad_id = processor.pad_id() if processor.pad_id() >= 0 else pieces
        self.vocab_size = max(pieces, self.pad_id + 1)  # embedding rows, pad included

    def tag_id(self, language: str) -> int:
        """The id of `language`'s tag piece; a DataError when the model lacks it (or splits it)."""
        tag = language_tag(language)
        tag_id = self.processor.piece_to_id(tag)  # <unk>'s id when the model lacks the piece
        if tag_id == UNK_ID or tag_id not in self.processor.encode(tag, out_type=int):  # missing, or not kept whole
            raise DataError(
                f"{self.path} has no piece {tag} for the target language {language!r}",
                "train the tokenizer with the language tags: leave tokenizer.model empty (seqtool train trains it), "
                "or pass --tgt-langs to seqtool tokenizer train",
            )
        return tag_id

    def encode(self, lines: Iterable[str]) -> list[list[int]]:
        """Text lines -> piece ids (no <s>/</s>)."""
        return self.processor.encode(list(lines), out_type=int)

    def encode_pieces(self, lines: Iterable[str]) -> list[list[str]]:
        """Text lines -> pieces, for inspection."""
        return self.processor.encode(list(lines), out_type=str)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Piece ids -> text (specials and the padding id are dropped)."""
        limit = self.processor.get_piece_size()
        drop = {BOS_ID, EOS_ID, self.pad_id}
        keep = [[i for i in seq if i < limit and i not in drop] for seq in ids]
        return self.processor.decode(keep)

    def decode_pieces(self, pieces: Sequence[Sequence[str]]) -> list[str]:
        """Pieces -> text."""
        return self.processor.decode_pieces([list(p) for p in pieces])


class Tokenizer:
    """The source and target tokenizers of a model (one shared object when joint)."""

    def __init__(self, src: SentencePieceModel, tgt: SentencePieceModel) -> None:
        self.src = src
        self.tgt = tgt
        self.joint = src.path == tgt.path
        if src.pad_id != tgt.pad_id:
            raise DataError(f"{src.path} and {tgt.path} use different padding ids ({src.pad_id} vs {tgt.pad_id})")
        self.specials = SpecialIds(pad=src.pad_id, bos=BOS_ID, eos=EOS_ID, unk=UNK_ID)

    @classmethod
    def load(cls, src_path: str | Path, tgt_path: str | Path | None = None) -> Tokenizer:
        """Load a joint model (one path) or a source and a target model."""
        src = SentencePieceModel(src_path)
        tgt = src if tgt_path is None or Path(tgt_path) == Path(src_path) else SentencePieceModel(tgt_path)
        return cls(src, tgt)
