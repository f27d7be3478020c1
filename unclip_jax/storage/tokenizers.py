"""Saved tokenizers in directories that may be URIs (gs://): `text.tokenizer` reads and writes
local folders only (Hugging Face's tokenizers among them), so one in a bucket is read from a local
copy and written through a local folder uploaded after."""

import os

from unclip_jax.storage.locations import local_directory, writing_directory
from unclip_jax.text import tokenizer as tokenizer_lib


def load_tokenizer(directory: str | os.PathLike) -> tokenizer_lib.Tokenizer:
    """The tokenizer saved in `directory` (`text.tokenizer.load_tokenizer`)."""
    with local_directory(directory) as local:
        return tokenizer_lib.load_tokenizer(local)


def save_tokenizer(tokenizer: tokenizer_lib.Tokenizer, directory: str | os.PathLike) -> None:
    """`tokenizer.save` into `directory`."""
    with writing_directory(directory) as local:
        tokenizer.save(local)
