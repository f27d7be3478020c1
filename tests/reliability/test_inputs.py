"""Bad input to every sampling, evaluation, embedding and conversion subcommand: refused with one
line `unclip CMD: error...` naming the bad value (exit 1 for a bad value or file, 2 for a flag no
parser accepts: a non-finite float, a seed out of range), no traceback, before anything is loaded
or compiled, and every file saved before the call unchanged."""

import subprocess
import sys

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


# id -> (argv of p, exit code, texts the error line names, setup(p, monkeypatch) or None)
CASES = {
    "generate-prior-guidance-inf": (
        lambda p: ["generate", P, "--prior_guidance=inf", _ck(p), _out(p)],
        2,
        lambda p: ["--prior_guidance=inf"],
        None,
    ),
    "generate-decoder-guidance-nan": (
        lambda p: ["generate", P, "--decoder_guidance=nan", _ck(p), _out(p)],
        2,
        lambda p: ["--decoder_guidance=nan"],
        None,
    ),
    "generate-decoder-guidance-minus-inf": (
        lambda p: ["generate", P, "--decoder_guidance=-inf", _ck(p), _out(p)],
        2,
        lambda p: ["--decoder_guidance=-inf"],
        None,
    ),
    "generate-seed-2**63": (
        lambda p: ["generate", P, f"--seed={2**63}", _ck(p), _out(p)],
        2,
        lambda p: [f"--seed={2**63}"],
        None,
    ),
    "generate-seed-negative": (
        lambda p: ["generate", P, "--seed=-1", _ck(p), _out(p)],
        2,
        lambda p: ["--seed=-1"],
        None,
    ),
    "generate-non-utf8-prompt": (
        lambda p: ["generate", "\udcffred", f"--checkpoint={p['pipeline']}", _out(p)],
        1,
        lambda p: ["'\\udcffred'", "UTF-8"],
        None,
    ),
    "generate-out-is-a-file": (
        lambda p: ["generate", P, _ck(p), f"--out={p['file']}"],
        1,
        lambda p: [str(p["file"])],
        None,
    ),
    "generate-num-images-0": (
        lambda p: ["generate", P, "--num_images=0", _ck(p), _out(p)],
        1,
        lambda p: ["--num_images", "0"],
        None,
    ),
    "variations-text-file": (
        lambda p: ["variations", str(p["file"]), _ck(p), _out(p)],
        1,
        lambda p: [str(p["file"]), "not a readable image"],
        None,
    ),
    "variations-float-image": (
        lambda p: ["variations", str(_image(p, "F", np.float32, "f.tiff")), _ck(p), _out(p)],
        1,
        lambda p: [str(p["root"] / "f.tiff"), "mode 'F'"],
        None,
    ),
    "variations-missing-image": (
        lambda p: ["variations", str(p["root"] / "nope.png"), _ck(p), _out(p)],
        1,
        lambda p: [str(p["root"] / "nope.png")],
        None,
    ),
    "variations-count-0": (
        lambda p: ["variations", str(p["a"]), "--num_variations=0", _ck(p), _out(p)],
        1,
        lambda p: ["--num_variations", "0"],
        None,
    ),
    "variations-decoder-guidance-inf": (
        lambda p: ["variations", str(p["a"]), "--decoder_guidance=inf", _ck(p), _out(p)],
        2,
        lambda p: ["--decoder_guidance=inf"],
        None,
    ),
    "variations-decompression-bomb": (
        lambda p: ["variations", str(p["a"]), _ck(p), _out(p)],
        1,
        lambda p: [str(p["a"]), "decompression-bomb"],
        _bomb,
    ),
    "interpolate-one-frame": (
        lambda p: ["interpolate", str(p["a"]), str(p["b"]), "--frames=1", _ck(p), _out(p)],
        1,
        lambda p: ["--frames", "1"],
        None,
    ),
    "interpolate-seed-2**64": (
        lambda p: ["interpolate", str(p["a"]), str(p["b"]), f"--seed={2**64}", _ck(p), _out(p)],
        2,
        lambda p: [f"--seed={2**64}"],
        None,
    ),
    "interpolate-int32-image": (
        lambda p: ["interpolate", str(p["a"]), str(_image(p, "I", np.int32, "i.tiff")), _ck(p)],
        1,
        lambda p: [str(p["root"] / "i.tiff"), "mode 'I'"],
        None,
    ),
    "textdiff-theta-nan": (
        lambda p: ["textdiff", str(p["a"]), "--from=a", "--to=b", "--thetas=0,nan", _ck(p)],
        1,
        lambda p: ["--thetas", "nan"],
        None,
    ),
    "textdiff-theta-inf": (
        lambda p: ["textdiff", str(p["a"]), "--from=a", "--to=b", "--thetas=inf", _ck(p)],
        1,
        lambda p: ["--thetas", "inf"],
        None,
    ),
    "textdiff-non-utf8-caption": (
        lambda p: ["textdiff", str(p["a"]), "--from=a", "--to=\udcfe", _ck(p), _out(p)],
        1,
        lambda p: ["'\\udcfe'", "UTF-8"],
        None,
    ),
    "textdiff-upsampler-steps-0": (
        lambda p: ["textdiff", str(p["a"]), "--from=a", "--to=b", "--upsampler_steps=0", _ck(p)],
        1,
        lambda p: ["--upsampler_steps", "0"],
        None,
    ),
    "eval-captions-invalid-json": (
        lambda p: ["eval", f"--images={p['images']}"],
        1,
        lambda p: [str(p["images"] / "captions.json"), "not valid JSON"],
        _captions('{"000_00.png": '),
    ),
    "eval-captions-a-list": (
        lambda p: ["eval", f"--images={p['images']}"],
        1,
        lambda p: [str(p["images"] / "captions.json"), "list"],
        _captions('["000_00.png"]'),
    ),
    "eval-captions-empty": (
        lambda p: ["eval", f"--images={p['images']}"],
        1,
        lambda p: [str(p["images"] / "captions.json"), "no images"],
        _captions("{}"),
    ),
    "eval-caption-not-a-string": (
        lambda p: ["eval", f"--images={p['images']}"],
        1,
        lambda p: [str(p["images"] / "captions.json"), "'000_00.png'", "3"],
        _captions('{"000_00.png": 3}'),
    ),
    "eval-decoder-guidance-inf": (
        lambda p: ["eval", f"--images={p['images']}", "--decoder_guidance=inf"],
        2,
        lambda p: ["--decoder_guidance=inf"],
        None,
    ),
    "embed-shard-size-0": (
        lambda p: _embed(p, _out(p), "--shard_size=0"),
        1,
        lambda p: ["--shard_size", "0"],
        None,
    ),
    "embed-batch-size-negative": (
        lambda p: _embed(p, _out(p), "--batch_size=-1"),
        1,
        lambda p: ["--batch_size", "-1"],
        None,
    ),
    "embed-clip-config-invalid-json": (
        lambda p: _embed(p, _out(p)),
        1,
        lambda p: [str(p["clip"] / "clip_config.json"), "not valid JSON"],
        None,
    ),
    "embed-out-under-a-file": (
        lambda p: _embed(p, f"--out={p['file'] / 'emb'}"),
        1,
        lambda p: [str(p["file"] / "emb"), "not writable"],
        None,
    ),
    "convert-clip-out-is-a-file": (
        lambda p: ["convert-clip", f"--hf-dir={p['root'] / 'hf'}", f"--out={p['file']}"],
        1,
        lambda p: [str(p["file"])],
        None,
    ),
    "convert-clip-out-under-a-file": (
        lambda p: ["convert-clip", f"--hf-dir={p['root'] / 'hf'}", f"--out={p['file'] / 'c'}"],
        1,
        lambda p: [str(p["file"] / "c"), "not writable"],
        None,
    ),
    "convert-karlo-out-is-a-file": (
        lambda p: ["convert-karlo", f"--diffusers-dir={p['root'] / 'k'}", f"--out={p['file']}"],
        1,
        lambda p: [str(p["file"])],
        None,
    ),
    "convert-karlo-out-under-a-file": (
        lambda p: ["convert-karlo", f"--diffusers-dir={p['root']}", f"--out={p['file'] / 'k'}"],
        1,
        lambda p: [str(p["file"] / "k"), "not writable"],
        None,
    ),
    "convert-karlo-out-holds-other-files": (
        lambda p: ["convert-karlo", f"--diffusers-dir={p['root']}", f"--out={p['earlier']}"],
        1,
        lambda p: [str(p["earlier"]), "not a Karlo checkpoint"],
        None,
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
