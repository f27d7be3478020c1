"""Bad input to every sampling, evaluation, embedding and conversion subcommand: refused with one
line `unclip CMD: error...` naming the bad value (exit 1 for a bad value or file, 2 for a flag no
parser accepts: a non-finite float, a seed out of range), no traceback, before anything is loaded
or compiled, and every file saved before the call unchanged."""

import subprocess
import sys
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image
from reliability.io_helpers import io_assert_refused, io_call, io_inputs, io_snapshot

P = "a red circle"


def _ck(p):
    return f"--checkpoint={p['root'] / 'no_checkpoint'}"


def _out(p):
    return f"--out={p['root'] / 'new_out'}"


def _embed(p, *extra):
    return ["embed", f"--config={p['config']}", f"--checkpoint={p['clip']}", *extra]


def _image(p, mode, dtype, name):
    path = p["root"] / name
    Image.fromarray(np.full((16, 16), 7, dtype)).save(path)
    assert Image.open(path).mode == mode
    return path


def _captions(text):
    return lambda p, _: (p["images"] / "captions.json").write_text(text)


def _bomb(p, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a.png has 256 pixels


class Case(NamedTuple):
    argv: Callable  # p -> the command line
    code: int  # the exit code
    named: Callable  # p -> the texts the error line names
    setup: Callable | None = None  # (p, monkeypatch) -> None, before the call


CASES = {
    "generate-prior-guidance-inf": Case(
        lambda p: ["generate", P, "--prior_guidance=inf", _ck(p), _out(p)],
        2,
        lambda p: ["--prior_guidance=inf"],
    ),
    "generate-decoder-guidance-nan": Case(
        lambda p: ["generate", P, "--decoder_guidance=nan", _ck(p), _out(p)],
        2,
        lambda p: ["--decoder_guidance=nan"],
    ),
    "generate-decoder-guidance-minus-inf": Case(
        lambda p: ["generate", P, "--decoder_guidance=-inf", _ck(p), _out(p)],
        2,
        lambda p: ["--decoder_guidance=-inf"],
    ),
    "generate-seed-2**63": Case(
        lambda p: ["generate", P, f"--seed={2**63}", _ck(p), _out(p)],
        2,
        lambda p: [f"--seed={2**63}"],
    ),
    "generate-seed-negative": Case(
        lambda p: ["generate", P, "--seed=-1", _ck(p), _out(p)], 2, lambda p: ["--seed=-1"]
    ),
    "generate-non-utf8-prompt": Case(
        lambda p: ["generate", "\udcffred", f"--checkpoint={p['pipeline']}", _out(p)],
        1,
        lambda p: ["'\\udcffred'", "UTF-8"],
    ),
    "generate-out-is-a-file": Case(
        lambda p: ["generate", P, _ck(p), f"--out={p['file']}"], 1, lambda p: [str(p["file"])]
    ),
    "generate-num-images-0": Case(
        lambda p: ["generate", P, "--num_images=0", _ck(p), _out(p)],
        1,
        lambda p: ["--num_images", "0"],
    ),
    "variations-text-file": Case(
        lambda p: ["variations", str(p["file"]), _ck(p), _out(p)],
        1,
        lambda p: [str(p["file"]), "not a readable image"],
    ),
    "variations-float-image": Case(
        lambda p: ["variations", str(_image(p, "F", np.float32, "f.tiff")), _ck(p), _out(p)],
        1,
        lambda p: [str(p["root"] / "f.tiff"), "mode 'F'"],
    ),
    "variations-missing-image": Case(
        lambda p: ["variations", str(p["root"] / "nope.png"), _ck(p), _out(p)],
        1,
        lambda p: [str(p["root"] / "nope.png")],
    ),
    "variations-count-0": Case(
        lambda p: ["variations", str(p["a"]), "--num_variations=0", _ck(p), _out(p)],
        1,
        lambda p: ["--num_variations", "0"],
    ),
    "variations-decoder-guidance-inf": Case(
        lambda p: ["variations", str(p["a"]), "--decoder_guidance=inf", _ck(p), _out(p)],
        2,
        lambda p: ["--decoder_guidance=inf"],
    ),
    "variations-decompression-bomb": Case(
        lambda p: ["variations", str(p["a"]), _ck(p), _out(p)],
        1,
        lambda p: [str(p["a"]), "decompression-bomb"],
        setup=_bomb,
    ),
    "interpolate-one-frame": Case(
        lambda p: ["interpolate", str(p["a"]), str(p["b"]), "--frames=1", _ck(p), _out(p)],
        1,
        lambda p: ["--frames", "1"],
    ),
    "interpolate-seed-2**64": Case(
        lambda p: ["interpolate", str(p["a"]), str(p["b"]), f"--seed={2**64}", _ck(p), _out(p)],
        2,
        lambda p: [f"--seed={2**64}"],
    ),
    "interpolate-int32-image": Case(
        lambda p: ["interpolate", str(p["a"]), str(_image(p, "I", np.int32, "i.tiff")), _ck(p)],
        1,
        lambda p: [str(p["root"] / "i.tiff"), "mode 'I'"],
    ),
    "textdiff-theta-nan": Case(
        lambda p: ["textdiff", str(p["a"]), "--from=a", "--to=b", "--thetas=0,nan", _ck(p)],
        1,
        lambda p: ["--thetas", "nan"],
    ),
    "textdiff-theta-inf": Case(
        lambda p: ["textdiff", str(p["a"]), "--from=a", "--to=b", "--thetas=inf", _ck(p)],
        1,
        lambda p: ["--thetas", "inf"],
    ),
    "textdiff-non-utf8-caption": Case(
        lambda p: ["textdiff", str(p["a"]), "--from=a", "--to=\udcfe", _ck(p), _out(p)],
        1,
        lambda p: ["'\\udcfe'", "UTF-8"],
    ),
    "textdiff-upsampler-steps-0": Case(
        lambda p: ["textdiff", str(p["a"]), "--from=a", "--to=b", "--upsampler_steps=0", _ck(p)],
        1,
        lambda p: ["--upsampler_steps", "0"],
    ),
    "eval-captions-invalid-json": Case(
        lambda p: ["eval", f"--images={p['images']}"],
        1,
        lambda p: [str(p["images"] / "captions.json"), "not valid JSON"],
        setup=_captions('{"000_00.png": '),
    ),
    "eval-captions-a-list": Case(
        lambda p: ["eval", f"--images={p['images']}"],
        1,
        lambda p: [str(p["images"] / "captions.json"), "list"],
        setup=_captions('["000_00.png"]'),
    ),
    "eval-captions-empty": Case(
        lambda p: ["eval", f"--images={p['images']}"],
        1,
        lambda p: [str(p["images"] / "captions.json"), "no images"],
        setup=_captions("{}"),
    ),
    "eval-caption-not-a-string": Case(
        lambda p: ["eval", f"--images={p['images']}"],
        1,
        lambda p: [str(p["images"] / "captions.json"), "'000_00.png'", "3"],
        setup=_captions('{"000_00.png": 3}'),
    ),
    "eval-decoder-guidance-inf": Case(
        lambda p: ["eval", f"--images={p['images']}", "--decoder_guidance=inf"],
        2,
        lambda p: ["--decoder_guidance=inf"],
    ),
    "embed-shard-size-0": Case(
        lambda p: _embed(p, _out(p), "--shard_size=0"), 1, lambda p: ["--shard_size", "0"]
    ),
    "embed-batch-size-negative": Case(
        lambda p: _embed(p, _out(p), "--batch_size=-1"), 1, lambda p: ["--batch_size", "-1"]
    ),
    "embed-clip-config-invalid-json": Case(
        lambda p: _embed(p, _out(p)),
        1,
        lambda p: [str(p["clip"] / "clip_config.json"), "not valid JSON"],
    ),
    "embed-out-under-a-file": Case(
        lambda p: _embed(p, f"--out={p['file'] / 'emb'}"),
        1,
        lambda p: [str(p["file"] / "emb"), "not writable"],
    ),
    "convert-clip-out-is-a-file": Case(
        lambda p: ["convert-clip", f"--hf-dir={p['root'] / 'hf'}", f"--out={p['file']}"],
        1,
        lambda p: [str(p["file"])],
    ),
    "convert-clip-out-under-a-file": Case(
        lambda p: ["convert-clip", f"--hf-dir={p['root'] / 'hf'}", f"--out={p['file'] / 'c'}"],
        1,
        lambda p: [str(p["file"] / "c"), "not writable"],
    ),
    "convert-karlo-out-is-a-file": Case(
        lambda p: ["convert-karlo", f"--diffusers-dir={p['root'] / 'k'}", f"--out={p['file']}"],
        1,
        lambda p: [str(p["file"])],
    ),
    "convert-karlo-out-under-a-file": Case(
        lambda p: ["convert-karlo", f"--diffusers-dir={p['root']}", f"--out={p['file'] / 'k'}"],
        1,
        lambda p: [str(p["file"] / "k"), "not writable"],
    ),
    "convert-karlo-out-holds-other-files": Case(
        lambda p: ["convert-karlo", f"--diffusers-dir={p['root']}", f"--out={p['earlier']}"],
        1,
        lambda p: [str(p["earlier"]), "not a Karlo checkpoint"],
    ),
}


@pytest.fixture
def inputs(tmp_path, request):
    paths = io_inputs(tmp_path)
    paths["root"] = tmp_path
    if "utf8-prompt" in request.node.name:  # reaches the tokenizer without the check
        paths["pipeline"] = request.getfixturevalue("pipeline_dir")
    return paths


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_naming_it(unclip, inputs, monkeypatch, case):
    argv, code, named, setup = CASES[case]
    if setup:
        setup(inputs, monkeypatch)
    args = argv(inputs)  # may save an input file
    before = io_snapshot(inputs["root"])
    io_assert_refused(unclip(*args), code, *named(inputs))
    assert io_snapshot(inputs["root"]) == before
    assert not (inputs["root"] / "new_out").exists()


def test_unwritable_compilation_cache_is_named_before_loading(capsys, inputs):
    cache = inputs["file"] / "xla"
    before = io_snapshot(inputs["root"])
    argv = ["generate", P, _ck(inputs), _out(inputs), f"--compilation_cache={cache}"]
    io_assert_refused(io_call(capsys, *argv), 1, str(cache), "not writable")
    assert io_snapshot(inputs["root"]) == before


def test_non_utf8_argument_bytes_from_a_shell(inputs):
    """The bytes of a real command line (Latin-1 'é' in a UTF-8 locale), in a new process."""
    command = [sys.executable, "-m", "unclip_jax.cli", "generate", b"caf\xe9"]
    command += [_ck(inputs), _out(inputs), "--compilation_cache="]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    io_assert_refused((result.returncode, result.stdout, result.stderr), 1, "'caf\\udce9'")
