"""`unclip generate` and `unclip eval`: PNGs, captioned grid and captions written at once;
every bad input refused with a clear message, a non-zero exit and nothing written."""

import json

import numpy as np
from PIL import Image
from tiny_pipeline import STEPS


def test_generate_then_eval(unclip, pipeline_dir, tmp_path):
    out = tmp_path / "out"
    long_prompt = "a red circle " * 20
    code, _, stderr = unclip(
        "generate",
        "a red circle",
        "",
        long_prompt,
        "--num_images=1",
        "--prior_steps=2",
        *STEPS,
        f"--checkpoint={pipeline_dir}",
        f"--out={out}",
    )
    assert code == 0, stderr[-2000:]
    assert "caption truncated" in stderr
    captions = json.loads((out / "captions.json").read_text())
    assert list(captions.values()) == ["a red circle", "", long_prompt]
    for name in captions:
        assert np.asarray(Image.open(out / name)).shape == (16, 16, 3)
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[0] == 3 * 18 and grid.shape[1] > 16
    assert not [p.name for p in tmp_path.iterdir() if p.name != "out"]  # no staging left

    code, _, stderr = unclip("eval", f"--images={out}", f"--metrics={tmp_path / 'm.json'}")
    assert code == 0, stderr[-2000:]
    figures = json.loads((tmp_path / "m.json").read_text())
    assert figures["num_images"] == 3
    assert 0.0 <= figures["single_colour_shape"] <= figures["single_colour"] <= 1.0
    # The metrics carry the evaluation's record and, through the images' run.json, generate's
    # with the pipeline's own.
    (generated,) = figures["run"]["images"]
    assert generated["pipeline"] and "stages" in generated["pipeline"][0]
    assert {"command", "git", "versions", "devices"} <= set(figures["run"]["eval"])


def _fails(unclip, tmp_path, *args, message):
    out = tmp_path / "never"
    code, _, stderr = unclip("generate", *args, f"--out={out}")
    assert code != 0
    assert message in stderr, stderr[-2000:]
    assert "Traceback" not in stderr
    assert not out.exists()


def test_missing_stage_is_named(unclip, pipeline_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(pipeline_dir, broken)
    shutil.rmtree(broken / "prior")
    _fails(
        unclip, tmp_path, "a red circle", f"--checkpoint={broken}", message="missing stage 'prior'"
    )


def test_bad_numbers_fail_before_loading(unclip, tmp_path):
    missing = str(tmp_path / "no_checkpoint")
    cases = [
        ("--decoder_guidance=-1", "--decoder_guidance must be a finite number >= 0, got -1.0"),
        ("--prior_guidance=-2", "--prior_guidance must be a finite number >= 0"),
        ("--decoder_steps=0", "--decoder_steps must be >= 1, got 0"),
        ("--prior_steps=-1", "--prior_steps must be >= 1, got -1"),
        ("--num_images=0", "--num_images must be an integer >= 1"),
    ]
    for flag, message in cases:
        _fails(unclip, tmp_path, "a red circle", flag, f"--checkpoint={missing}", message=message)


def test_unwritable_output_is_refused_before_loading(unclip, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, stderr = unclip(
        "generate", "a red circle", f"--checkpoint={tmp_path / 'none'}", f"--out={blocker / 'sub'}"
    )
    assert code != 0 and "is not writable" in stderr
    code, _, stderr = unclip(
        "generate", "a red circle", f"--checkpoint={tmp_path / 'none'}", f"--out={blocker}"
    )
    assert code != 0 and "exists and is not a directory" in stderr


def test_no_prompt_is_a_usage_error(unclip, tmp_path):
    code, _, stderr = unclip("generate", f"--out={tmp_path / 'o'}")
    assert code != 0 and "at least one prompt" in stderr
