"""A byte-pair encoding trained on the training captions (merges learned here, deterministically;
encoded by Hugging Face `tokenizers`), for data sets with no CLIP vocabulary such as the synthetic
shapes set.

Lower-cased, split on whitespace and punctuation, words end in "</w>" as in CLIP's BPE. Ids 0-3
are padding, start-of-text, end-of-text and unknown (characters unseen in training); every
sequence is `[sot, ..., eot]`, so the text tower pools at the first end-of-text (pooling "eos").
"""

import heapq
import itertools
import pathlib
from collections import Counter, defaultdict
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


def _words(captions: Iterable[str], backend) -> Counter:
    """Word counts of the captions, normalised and split as the tokenizer will split them."""
    counts: Counter = Counter()
    for caption in captions:
        text = backend.normalizer.normalize_str(caption)
        counts.update(word for word, _ in backend.pre_tokenizer.pre_tokenize_str(text))
    return counts


def learn_merges(word_counts: Counter, num_merges: int) -> list[tuple[str, str]]:
    """Up to `num_merges` BPE merges of the words' symbols (characters, the last one ending in
    "</w>"), the most frequent pair first; ties go to the lexicographically first pair, so the same
    captions always give the same merges."""
    words = [[*w[:-1], w[-1] + _SUFFIX] for w in word_counts]
    counts = list(word_counts.values())
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for index, symbols in enumerate(words):
        for pair in itertools.pairwise(symbols):
            pairs[pair] += counts[index]
            where[pair].add(index)
    heap = [(-count, pair) for pair, count in pairs.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap and len(merges) < num_merges:
        count, pair = heapq.heappop(heap)
        if -count != pairs[pair] or not count:  # stale entry
            continue
        merges.append(pair)
        for index in sorted(where.pop(pair, ())):
            symbols, merged = words[index], []
            for left, right in itertools.pairwise(symbols):
                pairs[(left, right)] -= counts[index]
            k = 0
            while k < len(symbols):
                if k + 1 < len(symbols) and (symbols[k], symbols[k + 1]) == pair:
                    merged.append(symbols[k] + symbols[k + 1])
                    k += 2
                else:
                    merged.append(symbols[k])
                    k += 1
            words[index] = merged
            for new_pair in itertools.pairwise(merged):
                pairs[new_pair] += counts[index]
                where[new_pair].add(index)
                heapq.heappush(heap, (-pairs[new_pair], new_pair))
        pairs.pop(pair, None)
    return merges


def train_bpe(
    captions: Iterable[str], vocab_size: int = 256, context_length: int = 32
) -> BPETokenizer:
    """A BPE with at most `vocab_size` tokens (special tokens and every symbol of the captions
    included) learned from captions; the same captions always give the same tokenizer."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS)}, got {vocab_size}")
    empty = Backend(models.BPE(unk_token=UNK))
    empty.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    empty.pre_tokenizer = pre_tokenizers.Whitespace()
    word_counts = _words(captions, empty)
    alphabet = sorted({c for w in word_counts for c in w})
    endings = sorted({w[-1] + _SUFFIX for w in word_counts})
    symbols = [*SPECIAL_TOKENS, *alphabet, *endings]
    merges = learn_merges(word_counts, max(vocab_size - len(symbols), 0))
    vocab = {token: index for index, token in enumerate([*symbols, *(a + b for a, b in merges)])}
    backend = Backend(
        models.BPE(vocab=vocab, merges=merges, unk_token=UNK, end_of_word_suffix=_SUFFIX)
    )
    backend.normalizer = empty.normalizer
    backend.pre_tokenizer = empty.pre_tokenizer
    backend.decoder = decoders.BPEDecoder(suffix=_SUFFIX)
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return BPETokenizer(backend, context_length)
