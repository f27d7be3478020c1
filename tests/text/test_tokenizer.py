"""Tokenizers: padding/truncation with end-of-text kept last, masks, the truncation warning,
saving and loading by kind, and agreement with Hugging Face's own CLIP tokenizer."""

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from unclip_jax.text.bpe import TOKENIZER_FILE, learn_merges, train_bpe
from unclip_jax.text.tokenizer import CaptionTruncatedWarning, CLIPTokenizer, load_tokenizer

CAPTIONS = [
    f"a {size} {colour} {shape}"
    for size in ("small", "large")
    for colour in ("red", "green", "blue")
    for shape in ("circle", "square", "triangle")
]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny CLIP vocabulary: the 512 byte-level symbols, a few merges, the two special tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = ["r e", "re d</w>", "c i", "ci r", "a</w> r"]
    vocab = [*symbols, *(s + "</w>" for s in symbols), "re", "red</w>", "ci", "cir", "a</w>r"]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    path = tmp_path_factory.mktemp("clip_vocab")
    (path / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return path


@pytest.fixture(scope="module")
def clip_tokenizer(clip_dir):
    return CLIPTokenizer.from_pretrained(clip_dir, context_length=8)


def test_clip_matches_hugging_face_padding(clip_tokenizer):
    texts = ["a red", "Red  CIRCLE"]
    ids, mask = clip_tokenizer(texts)
    reference = clip_tokenizer.hf_tokenizer(texts, padding="max_length", max_length=8)
    np.testing.assert_array_equal(ids, np.asarray(reference["input_ids"]))
    np.testing.assert_array_equal(mask, np.asarray(reference["attention_mask"]))
    assert ids.dtype == np.int32 and ids.shape == (2, 8)


def test_clip_truncation_keeps_end_of_text_and_names_dropped_text(clip_tokenizer):
    with pytest.warns(
        CaptionTruncatedWarning, match=r"dropped 'cle' from 'a red red red red circle'"
    ):
        ids, mask = clip_tokenizer(["a red red red red circle", "red"])
    eot = clip_tokenizer.eot_id
    assert ids[0, -1] == eot and mask[0].tolist() == [1] * 8
    full = clip_tokenizer.hf_tokenizer(["a red red red red circle"])["input_ids"][0]
    assert ids[0, :7].tolist() == full[:7]
    # "red" = [sot, red</w>, eot] then padding (pad is end-of-text for CLIP).
    assert mask[1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert ids[1, 2] == eot


def test_clip_save_load_round_trip(clip_tokenizer, tmp_path):
    clip_tokenizer.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.kind == "clip" and loaded.context_length == 8
    texts = ["a red circle", "circle red a"]
    np.testing.assert_array_equal(loaded(texts)[0], clip_tokenizer(texts)[0])


def test_bpe_trained_on_captions(tmp_path):
    tokenizer = train_bpe(CAPTIONS, vocab_size=64, context_length=8)
    ids, mask = tokenizer(CAPTIONS)
    lengths = mask.sum(-1)
    # Every caption: start, one token per word (the vocabulary has room), end, padding.
    assert (lengths == 6).all() and (ids[:, 0] == tokenizer.sot_id).all()
    assert (ids[np.arange(len(ids)), lengths - 1] == tokenizer.eot_id).all()
    assert (ids[mask == 0] == tokenizer.pad_id).all()
    assert len({tuple(row) for row in ids.tolist()}) == len(CAPTIONS)
    assert [tokenizer.decode(row) for row in ids] == CAPTIONS
    tokenizer.save(tmp_path / "bpe")
    loaded = load_tokenizer(tmp_path / "bpe")
    assert loaded.kind == "bpe"
    np.testing.assert_array_equal(loaded(CAPTIONS)[0], ids)


def test_bpe_truncation_and_unknown_characters():
    tokenizer = train_bpe(CAPTIONS, vocab_size=64, context_length=6)
    with pytest.warns(
        CaptionTruncatedWarning,
        match="dropped 'and a square' from 'a small red circle and a square'",
    ):
        ids, mask = tokenizer(["a small red circle and a square"])
    assert ids[0, -1] == tokenizer.eot_id and mask.sum() == 6
    ids, _ = tokenizer(["a red z"])
    assert tokenizer.backend.token_to_id("<|unk|>") in ids[0]


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"unclip_tokenizer\.json is missing"):
        load_tokenizer(tmp_path)
    (tmp_path / "unclip_tokenizer.json").write_text('{"kind": "wordpiece", "context_length": 4}')
    with pytest.raises(ValueError, match=r"kind must be one of.*'wordpiece'"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="no CLIP tokenizer"):
        CLIPTokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="sequence of strings"):
        train_bpe(CAPTIONS, 64, 8)("a caption")


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"kind": "bpe", ', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        ('["bpe", 8]', "must hold a JSON object"),
        ('{"kind": "bpe", "context_length": "8"}', "context_length must be an integer >= 2"),
    ],
)
def test_broken_metadata_names_the_file(tmp_path, text, message):
    meta = tmp_path / "unclip_tokenizer.json"
    meta.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=f"{meta}.*{message}|{message}") as error:
        load_tokenizer(tmp_path)
    assert str(meta) in str(error.value)


def test_non_utf8_text_is_named(clip_tokenizer):
    """A command-line argument whose bytes were not UTF-8 holds lone surrogates; the tokenizers
    refused it with a TypeError from inside the Hugging Face library."""
    for tokenizer in (clip_tokenizer, train_bpe(CAPTIONS, 64, 8)):
        with pytest.raises(ValueError, match=r"'caf\\udce9' is not valid UTF-8"):
            tokenizer(["a red circle", "caf\udce9"])


def test_bpe_merges_take_the_most_frequent_pair_and_break_ties_by_order():
    merges = learn_merges(Counter({"abab": 3, "cd": 3, "ce": 1, "e": 5}), 4)
    # "abab" is a b a b</w>: (a, b), (b, a), (a, b</w>) and (c, d</w>) tie at 3, (c, e</w>) has 1
    assert merges == [("a", "b"), ("a", "b</w>"), ("ab", "ab</w>"), ("c", "d</w>")]


def test_bpe_training_gives_the_same_tokenizer_in_every_process(tmp_path):
    """Python's string hashing differs between processes; the trained vocabulary must not."""
    script = (
        "import sys; from unclip_jax.text.bpe import train_bpe; "
        f"train_bpe({CAPTIONS!r} * 3, 64, 8).save(sys.argv[1])"
    )
    files = []
    for seed in ("1", "2", "3"):
        out = tmp_path / seed
        env = {**os.environ, "PYTHONHASHSEED": seed, "JAX_PLATFORMS": "cpu"}
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env, timeout=120)
        files.append((out / TOKENIZER_FILE).read_bytes())
    assert files[0] == files[1] == files[2]
