"""Where results go: a sampling command refuses an --out that holds files unless --overwrite, which
replaces the whole folder only once the new files are written (so nothing earlier is mixed in or
lost on a failure); textdiff's file names are unique and exact; eval checks --metrics before
computing and prints its figures before writing them; a full disk names the file (exit 1)."""

import errno
import json
import pathlib

import numpy as np
import pytest
from PIL import Image
from reliability.io_helpers import io_assert_refused, io_inputs, io_snapshot
from tiny_pipeline import STEPS

from unclip_jax.pipelines import outputs


@pytest.fixture
def inputs(tmp_path):
    paths = io_inputs(tmp_path)
    paths["root"] = tmp_path
    return paths


def _refused_and_untouched(unclip, inputs, args: tuple[str, ...], *named: str) -> None:
    """`unclip generate "a red circle" ARGS` exits 1 naming each of `named`, every file kept."""
    before = io_snapshot(inputs["root"])
    io_assert_refused(unclip("generate", "a red circle", *args), 1, *named)
    assert io_snapshot(inputs["root"]) == before


def test_an_out_holding_files_is_refused_and_kept(unclip, inputs):
    args = (f"--checkpoint={inputs['root']}", f"--out={inputs['earlier']}")
    named = (str(inputs["earlier"]), "already holds 2", "--overwrite")
    _refused_and_untouched(unclip, inputs, args, *named)


def test_overwrite_that_fails_before_writing_keeps_the_earlier_results(unclip, inputs):
    missing = inputs["root"] / "none"
    args = ("--overwrite", f"--checkpoint={missing}", f"--out={inputs['earlier']}")
    _refused_and_untouched(unclip, inputs, args, str(missing))


def test_overwrite_never_deletes_a_folder_no_run_wrote(unclip, inputs):
    """--overwrite of a directory holding folders (a home, a project) is refused: no sampling run
    writes folders, so it is no earlier output."""
    args = ("--overwrite", f"--checkpoint={inputs['root'] / 'none'}", f"--out={inputs['root']}")
    _refused_and_untouched(unclip, inputs, args, str(inputs["root"]), "'clip'", "--overwrite")


def test_overwrite_replaces_the_whole_folder(unclip, pipeline_dir, inputs):
    earlier = inputs["earlier"]
    for name in ("000_01.png", "001_00.png"):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(earlier / name)
    (earlier / "notes.txt").write_text("an earlier run's")
    code, _, err = unclip(
        "generate",
        "a blue square",
        "--num_images=1",
        "--prior_steps=2",
        *STEPS,
        "--overwrite",
        f"--checkpoint={pipeline_dir}",
        f"--out={earlier}",
    )
    assert code == 0, err[-2000:]
    names = sorted(p.name for p in earlier.iterdir())
    assert names == ["000_00.png", "captions.json", "grid.png", "run.json"]
    assert json.loads((earlier / "captions.json").read_text()) == {"000_00.png": "a blue square"}
    # The output records its run and the pipeline's own record (its export).
    (record,) = json.loads((earlier / "run.json").read_text())["runs"]
    assert {"command", "git", "versions", "devices"} <= set(record)
    assert record["pipeline"] and "stages" in record["pipeline"][0]
    assert sorted(p.name for p in inputs["root"].iterdir() if p.name.startswith(".")) == []


def test_textdiff_names_are_unique_and_exact(unclip, pipeline_dir, inputs):
    """θ = 0.501 and 0.504 used to both become theta_0.50.png: two edits, one file."""
    out = inputs["root"] / "edits"
    code, stdout, err = unclip(
        "textdiff",
        str(inputs["a"]),
        "--from=a red circle",
        "--to=a blue circle",
        "--thetas=0.501,0.504",
        *STEPS,
        f"--checkpoint={pipeline_dir}",
        f"--out={out}",
    )
    assert code == 0, err[-2000:]
    assert "wrote 2 edits" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid.png", "run.json", "theta_00_0.501.png", "theta_01_0.504.png"]


def test_metrics_path_is_checked_before_computing(unclip, inputs):
    metrics = inputs["root"] / "a_directory"
    metrics.mkdir()
    before = io_snapshot(inputs["root"])
    result = unclip("eval", f"--images={inputs['images']}", f"--metrics={metrics}")
    io_assert_refused(result, 1, str(metrics), "is a directory")
    assert result[1] == ""  # refused before any figure was computed
    assert io_snapshot(inputs["root"]) == before


def test_full_disk_names_the_file_and_keeps_the_figures(unclip, inputs, monkeypatch):
    metrics = inputs["root"] / "m.json"

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() does: no file name

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    result = unclip("eval", f"--images={inputs['images']}", f"--metrics={metrics}")
    io_assert_refused(result, 1, str(metrics), "No space left on device")
    assert json.loads(result[1])["num_images"] == 1  # the figures were printed first


def test_a_failed_replacement_keeps_the_earlier_folder(inputs, monkeypatch):
    earlier = inputs["earlier"]
    before = io_snapshot(earlier)
    saved = Image.Image.save

    def save(self, path, *args, **kwargs):
        if str(path).endswith("b.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return saved(self, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(OSError, match=r"b\.png"):
        outputs.write_outputs(earlier, {"a.png": image, "b.png": image}, replace=True)
    assert io_snapshot(earlier) == before
    assert [p.name for p in inputs["root"].iterdir() if p.name.startswith(".")] == []
