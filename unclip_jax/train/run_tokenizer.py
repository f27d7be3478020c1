"""A training run's caption tokenizer, kept in its workdir so that a resumed run reads captions
exactly as before: reloaded when saved there, else a given one (a fine-tuned CLIP's), else a BPE
trained on the captions of the first training examples. Either directory may be a URI."""

import os
from collections.abc import Iterable, Sequence

import jax
import ml_collections
from etils import epath

from unclip_jax.storage.tokenizers import load_tokenizer, save_tokenizer
from unclip_jax.text import bpe
from unclip_jax.text import tokenizer as tokenizer_lib


def caption_text(value) -> str:
    """A caption as stored by a data source (bytes or str) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def run_tokenizer(
    settings: ml_collections.ConfigDict,
    saved: str | os.PathLike,
    source: Sequence,
    given: str | os.PathLike | None = None,
    extra_captions: Iterable[str] = (),
):
    """The tokenizer saved in `saved`, else the one in `given`, else a BPE of `settings.vocab_size`
    tokens and `settings.context_length` positions trained on the captions of the first
    `settings.train_examples` examples of `source` (and `extra_captions`); saved to `saved`."""
    if (epath.Path(saved) / tokenizer_lib.META_FILE).is_file():
        return load_tokenizer(saved)
    if given:
        tokenizer = load_tokenizer(given)
    else:
        count = min(len(source), settings.train_examples)
        captions = [caption_text(c) for i in range(count) for c in source[i]["captions"]]
        captions += list(extra_captions)
        tokenizer = bpe.train_bpe(captions, settings.vocab_size, settings.context_length)
    if jax.process_index() == 0:
        save_tokenizer(tokenizer, saved)
    return tokenizer
