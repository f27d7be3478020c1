"""A damaged pipeline directory is named in one line before anything is compiled: the sampling
commands exit 1 with the file and what is wrong with it, print no traceback, and write nothing."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from reliability.io_helpers import io_assert_refused


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value))


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    value = json.loads(path.read_text())
    edit(value)
    _write_json(path, value)


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(settings: dict) -> None:
        for key in keys[:-1]:
            settings = settings[key]
        settings[keys[-1]] = value

    return edit


# name -> (damage(directory), the words the one-line error must hold)
DAMAGES = {
    "manifest not JSON": (
        lambda d: (d / "unclip.json").write_text("{format: 1"),
        ["unclip.json", "not valid JSON"],
    ),
    "manifest a list": (
        lambda d: _write_json(d / "unclip.json", [1, 0]),
        ["unclip.json", "JSON object", "list"],
    ),
    "manifest format": (
        lambda d: _write_json(d / "unclip.json", {"format": 7, "upsamplers": 1}),
        ["unclip.json", "format must be 1", "7"],
    ),
    "manifest upsampler count": (
        lambda d: _write_json(d / "unclip.json", {"format": 1, "upsamplers": "one"}),
        ["unclip.json", "upsamplers", "'one'"],
    ),
    "manifest counts a missing upsampler": (
        lambda d: _write_json(d / "unclip.json", {"format": 1, "upsamplers": 2}),
        ["missing stage 'upsampler_1'"],
    ),
    "decoder stage.json not JSON": (
        lambda d: (d / "decoder" / "stage.json").write_bytes(b"\xff\xfe{"),
        ["decoder/stage.json", "not valid JSON"],
    ),
    "prior stage.json a list": (
        lambda d: _write_json(d / "prior" / "stage.json", ["model"]),
        ["prior/stage.json", "JSON object", "list"],
    ),
    "decoder stage.json lacks model": (
        lambda d: _edit_json(d / "decoder" / "stage.json", lambda s: s.pop("model")),
        ["decoder/stage.json", "missing 'model'"],
    ),
    "prior stage.json lacks normalizer": (
        lambda d: _edit_json(d / "prior" / "stage.json", lambda s: s.pop("normalizer")),
        ["prior/stage.json", "missing 'normalizer'"],
    ),
    "decoder model not an object": (
        lambda d: _edit_json(d / "decoder" / "stage.json", _set("model", "unet")),
        ["decoder/stage.json", "'model' must be an object"],
    ),
    "prior model field misspelt": (
        lambda d: _edit_json(d / "prior" / "stage.json", _set("model", "widht", 16)),
        ["prior/stage.json", "widht"],
    ),
    "decoder diffusion schedule unknown": (
        lambda d: _edit_json(d / "decoder" / "stage.json", _set("diffusion", "schedule", "cos")),
        ["decoder/stage.json", "cos"],
    ),
    "decoder image size not a number": (
        lambda d: _edit_json(d / "decoder" / "stage.json", _set("image_size", "eight")),
        ["decoder/stage.json", "eight"],
    ),
    "decoder channels do not fit the parameters": (
        lambda d: _edit_json(
            d / "decoder" / "stage.json", _set("model", "unet", "base_channels", 16)
        ),
        ["decoder", "do not fit the model of its stage.json"],
    ),
    "prior width does not fit the parameters": (
        lambda d: _edit_json(d / "prior" / "stage.json", _set("model", "width", 32)),
        ["prior", "do not fit the model of its stage.json"],
    ),
    "upsampler depth does not fit the parameters": (
        lambda d: _edit_json(
            d / "upsampler_0" / "stage.json", _set("model", "unet", "num_res_blocks", 2)
        ),
        ["upsampler_0", "do not fit the model of its stage.json"],
    ),
    "decoder parameters missing": (
        lambda d: shutil.rmtree(d / "decoder" / "params"),
        ["missing stage 'decoder'", "decoder/params"],
    ),
}


@pytest.fixture
def damaged(pipeline_dir, tmp_path) -> Callable[[Callable[[Path], None]], Path]:
    def make(damage: Callable[[Path], None]) -> Path:
        copy = tmp_path / "pipeline"
        shutil.copytree(pipeline_dir, copy)
        damage(copy)
        return copy

    return make


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_a_damaged_pipeline_directory_is_named_in_one_line(unclip, damaged, tmp_path, name):
    damage, words = DAMAGES[name]
    directory = damaged(damage)
    before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    result = unclip("generate", "a red circle", f"--checkpoint={directory}", f"--out={out}")
    io_assert_refused(result, 1, *words)
    assert not out.exists() or not any(out.iterdir())
    assert {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()} == before


def test_a_checkpoint_that_is_a_file_is_named(unclip, tmp_path):
    file = tmp_path / "pipeline.tar"
    file.write_bytes(b"not a directory")
    code, _, err = unclip("generate", "a red circle", f"--checkpoint={file}", f"--out={tmp_path}/o")
    assert code == 1 and "Traceback" not in err
    assert f"checkpoint {str(file)!r} is a file, not a pipeline directory" in err
