"""Caption tokenizers behind one interface: `tokenizer(texts) -> (ids [B, L] int32, mask [B, L])`.

Kinds (`TOKENIZERS`): "clip", the Hugging Face CLIP tokenizer read from a local directory; "bpe",
a byte-pair encoding trained on the training captions (`unclip_jax.text.bpe`) for data with no
CLIP vocabulary. Every kind pads or truncates to its context length with the end-of-text token
kept last, and saves to / loads from a directory holding `unclip_tokenizer.json` (kind and
context length) beside its own files.
"""

import importlib
import json
import pathlib
import warnings
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

META_FILE = "unclip_tokenizer.json"


class CaptionTruncatedWarning(UserWarning):
    """A caption was longer than the context length; the message names the dropped text."""


class Tokenizer(Protocol):
    kind: str
    context_length: int
    vocab_size: int

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (ids [B, L] int32, mask [B, L] int32: 1 on tokens, 0 on padding)."""
        ...

    def save(self, directory: str | pathlib.Path) -> None: ...


def pad_or_truncate(
    sequences: Sequence[Sequence[int]],  # each starts with start-of-text, ends with end-of-text
    texts: Sequence[str],
    context_length: int,
    pad_id: int,
    decode: Callable[[Sequence[int]], str],
) -> tuple[np.ndarray, np.ndarray]:  # ids [B, L] int32, mask [B, L] int32
    """Fit token sequences to `context_length`, keeping end-of-text last when truncating.

    A truncated caption raises a CaptionTruncatedWarning naming the dropped text.
    """
    ids = np.full((len(sequences), context_length), pad_id, np.int32)
    mask = np.zeros((len(sequences), context_length), np.int32)
    for row, (sequence, text) in enumerate(zip(sequences, texts, strict=True)):
        sequence = list(sequence)
        if len(sequence) > context_length:
            dropped = decode(sequence[context_length - 1 : -1])
            warnings.warn(
                f"caption truncated to {context_length} tokens; dropped {dropped!r} from {text!r}",
                CaptionTruncatedWarning,
                stacklevel=3,
            )
            sequence = [*sequence[: context_length - 1], sequence[-1]]
        ids[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = 1
    return ids, mask


def check_utf8(texts: Sequence[str], what: str = "text") -> None:
    """ValueError naming the first text that is not Unicode text (e.g. a command-line argument
    whose bytes were not UTF-8, which Python keeps as lone surrogates)."""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{what} {text!r} is not valid UTF-8 text") from None


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"texts must be a sequence of strings, got the string {texts!r}")
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts must be strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    check_utf8(texts)
    return texts


def write_meta(directory: pathlib.Path, kind: str, context_length: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"kind": kind, "context_length": context_length}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))


class CLIPTokenizer:
    """The Hugging Face CLIP tokenizer (byte-level BPE, lower-cased) of a local directory
    (vocab.json + merges.txt, or tokenizer.json)."""

    kind = "clip"

    def __init__(self, hf_tokenizer, context_length: int = 77):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {context_length}")
        self.hf_tokenizer = hf_tokenizer
        self.context_length = context_length
        self.vocab_size = len(hf_tokenizer.get_vocab())
        self.eot_id = hf_tokenizer.eos_token_id
        pad = hf_tokenizer.pad_token_id
        self.pad_id = self.eot_id if pad is None else pad

    @classmethod
    def from_pretrained(
        cls, directory: str | pathlib.Path, context_length: int = 77
    ) -> "CLIPTokenizer":
        from transformers import CLIPTokenizer as HFCLIPTokenizer

        path = pathlib.Path(directory)
        names = ("vocab.json", "tokenizer.json")
        if not path.is_dir() or not any((path / name).is_file() for name in names):
            raise FileNotFoundError(
                f"no CLIP tokenizer in {str(path)!r}: expected vocab.json + merges.txt "
                "or tokenizer.json"
            )
        return cls(HFCLIPTokenizer.from_pretrained(str(path)), context_length)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        texts = _check_texts(texts)
        sequences = self.hf_tokenizer(texts, add_special_tokens=True)["input_ids"]
        return pad_or_truncate(
            sequences,
            texts,
            self.context_length,
            self.pad_id,
            lambda ids: self.hf_tokenizer.decode(ids, skip_special_tokens=True),
        )

    def save(self, directory: str | pathlib.Path) -> None:
        path = pathlib.Path(directory)
        write_meta(path, self.kind, self.context_length)
        self.hf_tokenizer.save_pretrained(str(path))

    @classmethod
    def load(cls, directory: str | pathlib.Path, context_length: int) -> "CLIPTokenizer":
        return cls.from_pretrained(directory, context_length)


# kind -> "module:class"; each class has `load(directory, context_length)`.
TOKENIZERS: dict[str, str] = {
    "clip": "unclip_jax.text.tokenizer:CLIPTokenizer",
    "bpe": "unclip_jax.text.bpe:BPETokenizer",
}


def load_tokenizer(directory: str | pathlib.Path) -> Tokenizer:
    """The tokenizer saved in `directory` by `tokenizer.save(directory)`; errors name the file.

    (Its JSON is read here rather than by `storage.json_files.read_json`: `text/` is the lowest
    layer and imports nothing of the package above it.)"""
    path = pathlib.Path(directory)
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"no saved tokenizer in {str(path)!r}: {META_FILE} is missing")
    try:
        meta = json.loads((path / META_FILE).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path / META_FILE} is not valid JSON: {error}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path / META_FILE} must hold a JSON object, not {type(meta).__name__}")
    if not isinstance(meta.get("context_length"), int) or meta["context_length"] < 2:
        length = meta.get("context_length")
        raise ValueError(
            f"{path / META_FILE}: context_length must be an integer >= 2, got {length!r}"
        )
    if meta.get("kind") not in TOKENIZERS:
        kind = meta.get("kind")
        raise ValueError(
            f"{path / META_FILE}: kind must be one of {sorted(TOKENIZERS)}, got {kind!r}"
        )
    module_name, class_name = TOKENIZERS[meta["kind"]].split(":")
    tokenizer_class = getattr(importlib.import_module(module_name), class_name)
    return tokenizer_class.load(path, int(meta["context_length"]))
