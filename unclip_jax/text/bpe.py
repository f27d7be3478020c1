"""A byte-pair encoding trained on the training captions (Hugging Face `tokenizers`), for data
sets with no CLIP vocabulary such as the synthetic shapes set.

Lower-cased, split on whitespace and punctuation, words end in "</w>" as in CLIP's BPE. Ids 0-3
are padding, start-of-text, end-of-text and unknown (characters unseen in training); every
sequence is `[sot, ..., eot]`, so the text tower pools at the first end-of-text (pooling "eos").
"""

import pathlib
from collections.abc import Iterable, Sequence

import numpy as np

from unclip_jax.text.tokenizer import _check_texts, pad_or_truncate, write_meta

PAD, SOT, EOT, UNK = "<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|unk|>"
SPECIAL_TOKENS = (PAD, SOT, EOT, UNK)
TOKENIZER_FILE = "bpe.json"
_SUFFIX = "</w>"


class BPETokenizer:
    kind = "bpe"

    def __init__(self, backend, context_length: int):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {context_length}")
        self.backend = backend
        self.context_length = context_length
        self.vocab_size = backend.get_vocab_size()
        self.pad_id, self.sot_id, self.eot_id, _ = (backend.token_to_id(t) for t in SPECIAL_TOKENS)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        texts = _check_texts(texts)
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        sequences = [[self.sot_id, *e.ids, self.eot_id] for e in encodings]
        return pad_or_truncate(sequences, texts, self.context_length, self.pad_id, self.decode)

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def save(self, directory: str | pathlib.Path) -> None:
        path = pathlib.Path(directory)
        write_meta(path, self.kind, self.context_length)
        self.backend.save(str(path / TOKENIZER_FILE))

    @classmethod
    def load(cls, directory: str | pathlib.Path, context_length: int) -> "BPETokenizer":
        from tokenizers import Tokenizer as Backend

        file = pathlib.Path(directory) / TOKENIZER_FILE
        if not file.is_file():
            raise FileNotFoundError(f"no BPE tokenizer in {str(directory)!r}: {file} is missing")
        return cls(Backend.from_file(str(file)), context_length)


def train_bpe(
    captions: Iterable[str], vocab_size: int = 256, context_length: int = 32
) -> BPETokenizer:
    """A BPE with at most `vocab_size` tokens (special tokens included) learned from captions."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS)}, got {vocab_size}")
    backend = Backend(models.BPE(unk_token=UNK, end_of_word_suffix=_SUFFIX))
    backend.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.BPEDecoder(suffix=_SUFFIX)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        end_of_word_suffix=_SUFFIX,
        show_progress=False,
    )
    backend.train_from_iterator(captions, trainer)
    return BPETokenizer(backend, context_length)
