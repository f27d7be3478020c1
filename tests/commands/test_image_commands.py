"""`unclip variations / interpolate / textdiff`: outputs written, bad images refused."""

import numpy as np
import pytest
from PIL import Image
from tiny_pipeline import STEPS


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(a)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(b)
    return a, b


def test_variations_interpolate_textdiff(unclip, pipeline_dir, images, tmp_path):
    a, b = images
    ckpt = f"--checkpoint={pipeline_dir}"
    code, _, err = unclip(
        "variations", str(a), "--num_variations=4", ckpt, *STEPS, f"--out={tmp_path / 'v'}"
    )
    assert code == 0, err[-2000:]
    assert len(list((tmp_path / "v").glob("variation_*.png"))) == 4
    # --eta=0 from the inverted x_T: every variation is the same reconstruction.
    code, _, err = unclip(
        "variations", str(a), "--num_variations=2", "--eta=0", "--x_T=inverted", ckpt, *STEPS,
        f"--out={tmp_path / 'v0'}",
    )  # fmt: skip
    assert code == 0, err[-2000:]
    same = [np.asarray(Image.open(tmp_path / "v0" / f"variation_00{k}.png")) for k in (0, 1)]
    np.testing.assert_array_equal(*same)
    code, _, err = unclip(
        "interpolate", str(a), str(b), "--frames=4", "--x_T=random", "--eta=0.5", ckpt, *STEPS,
        f"--out={tmp_path / 'i'}",
    )  # fmt: skip
    assert code == 0, err[-2000:]
    assert len(list((tmp_path / "i").glob("frame_*.png"))) == 4
    code, _, err = unclip(
        "textdiff",
        str(a),
        "--from=a red circle",
        "--to=a blue circle",
        "--thetas=0,0.5,1",
        ckpt,
        *STEPS,
        f"--out={tmp_path / 't'}",
    )
    assert code == 0, err[-2000:]
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "grid.png",
        "run.json",
        "theta_00_0.0.png",
        "theta_01_0.5.png",
        "theta_02_1.0.png",
    ]


@pytest.mark.parametrize("kind", ["text", "truncated", "missing"])
def test_bad_image_files(unclip, images, tmp_path, kind):
    bad = tmp_path / f"{kind}.png"
    if kind == "text":
        bad.write_text("hello")
    elif kind == "truncated":
        bad.write_bytes(images[0].read_bytes()[:80])
    out = tmp_path / "never"
    for args in (("variations", str(bad)), ("textdiff", str(bad), "--from=a", "--to=b")):
        code, _, err = unclip(*args, f"--checkpoint={tmp_path}", f"--out={out}")
        assert code != 0
        expected = "no image file" if kind == "missing" else "is not a readable image"
        assert expected in err and str(bad) in err, err[-2000:]
        assert not out.exists()


def test_textdiff_needs_both_captions_and_valid_thetas(unclip, images, tmp_path):
    a, _ = images
    code, _, err = unclip("textdiff", str(a), "--from=a red circle", f"--out={tmp_path / 'o'}")
    assert code != 0 and "--from and --to must both be given" in err
    code, _, err = unclip(
        "textdiff", str(a), "--from=x", "--to=y", "--thetas=0,2", f"--out={tmp_path / 'o'}"
    )
    assert code != 0 and "--thetas must be numbers in [0, 1]" in err


@pytest.mark.parametrize("command", ["variations", "interpolate"])
@pytest.mark.parametrize(
    "flag, expected",
    [("--eta=-1", "--eta"), ("--eta=nan", "--eta=nan"), ("--x_T=fresh", "--x_T")],
)
def test_bad_eta_and_x_T_exit_2_before_loading(unclip, images, tmp_path, command, flag, expected):
    # --checkpoint names no pipeline: a run that got as far as loading would fail with code 1.
    paths = [str(p) for p in images][: 1 if command == "variations" else 2]
    out = tmp_path / "never"
    code, _, err = unclip(command, *paths, flag, f"--checkpoint={tmp_path}", f"--out={out}")
    assert code == 2, err[-2000:]
    assert "error in flags" in err and expected in err and err.count("\n") == 1
    assert not out.exists()


def test_eta_and_x_T_are_listed_only_by_their_commands(unclip):
    for command, listed in (("variations", True), ("interpolate", True), ("textdiff", False)):
        code, out, _ = unclip(command, "--help")
        assert code == 0
        assert ("--eta:" in out and "--x_T:" in out) == listed, out
