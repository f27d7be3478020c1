"""`unclip train-folder`: the whole chain on a folder of PNG and JPEG files with captions, at the
smoke budget, into a pipeline that loads and samples; finished stages skipped on a re-run; bad
settings refused in one line before anything is built."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unclip_jax.data import shapes_render

REPO = Path(__file__).resolve().parents[2]


def write_folder(root: Path, count: int, size: int = 48) -> None:
    """`count` one-shape scenes, alternately PNG and JPEG, each with a `.txt` of two captions."""
    rng = np.random.default_rng(0)
    spec = shapes_render.SceneSpec(max_objects=1)
    root.mkdir(parents=True)
    for i in range(count):
        scene = shapes_render.sample_scene(rng, spec)
        name = f"scene{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(shapes_render.render(scene, size)).save(root / name)
        captions = shapes_render.captions(scene, rng, count=2)
        (root / name).with_suffix(".txt").write_text("\n".join(captions))


def train_folder(*flags: str, timeout: float | None = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "unclip_jax.cli", "train-folder", *flags]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    write_folder(root / "images", 40)
    flags = (
        "--config=configs/folder.py:smoke",
        f"--images={root / 'images'}",
        f"--workdir={root / 'work'}",
        "--image_size=32",
        "--config.validation_fraction=0.2",
        f"--config.data_dir={root / 'tfds'}",
    )
    run = train_folder(*flags)
    assert run.returncode == 0, run.stderr[-3000:]
    return root, flags, run


def test_trains_the_chain_into_a_pipeline(trained):
    from unclip_jax.pipelines.unclip import UnCLIP

    root, _, _ = trained
    work = root / "work"
    for stage in ("data", "clip", "embeddings", "prior", "decoder", "upsampler"):
        assert (work / stage / "DONE").is_file(), stage
    metrics = json.loads((work / "samples" / "metrics.json").read_text())
    assert len(metrics["held_out_captions"]) == 2
    assert np.isfinite([metrics["clip_score"], metrics["clip_score_data"]]).all()
    assert (work / "samples" / "samples.png").is_file()
    assert set(metrics["stages"]) == {
        "data", "clip", "embeddings", "prior", "decoder", "upsampler"
    }  # fmt: skip
    pipe = UnCLIP.load(work / "pipeline")
    steps = dict(prior_steps=2, decoder_steps=2, upsampler_steps=2)
    images = pipe.generate(["a red circle"], 2, seed=0, **steps)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8


def test_rerun_skips_finished_stages(trained):
    root, flags, _ = trained
    rerun = train_folder(*flags)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    metrics = json.loads((root / "work" / "samples" / "metrics.json").read_text())
    assert all(record["skipped"] for record in metrics["stages"].values())


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--images=/no/such/folder", "--images must be a directory of captioned images"),
        ("--image_size=30", "--image_size must be a multiple of the upsampling factor 4"),
        ("--pretrained_clip=/no/such/clip", "--pretrained_clip must be a Hugging Face CLIP"),
    ],
)
def test_bad_settings_refused_in_one_line(tmp_path, flag, message):
    write_folder(tmp_path / "images", 2)
    flags = [f"--images={tmp_path / 'images'}", f"--workdir={tmp_path / 'work'}", flag]
    run = train_folder("--config=configs/folder.py:smoke", *flags)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"unclip train-folder: error: {run.stderr.split('error: ', 1)[1].strip()}"
    ]
    assert message in run.stderr
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_shapes_as_a_folder_reach_the_demo_figures(tmp_path):
    """The demo's shapes exported as a folder (`shapes_captions.export_folder`) and trained by
    `unclip train-folder` with the demo's budgets: the oracle reads its samples of 256
    single-object captions at no more than 5 points below `make demo`'s figures (its
    `demo/metrics.json`)."""
    from configs import demo
    from unclip_jax.data import shapes_captions
    from unclip_jax.demo.evaluate import options, oracle_accuracy, single_captions
    from unclip_jax.pipelines.arguments import GenerateOptions
    from unclip_jax.pipelines.unclip import UnCLIP

    reference_file = REPO / "demo" / "metrics.json"
    if not reference_file.is_file():
        pytest.skip(f"needs the demo's figures: run `make demo` first (no {reference_file})")
    reference = json.loads(reference_file.read_text())
    shapes_captions.export_folder("large_64px", "train", tmp_path / "images")
    run = train_folder(
        f"--images={tmp_path / 'images'}",
        f"--workdir={tmp_path / 'work'}",
        f"--config.data_dir={tmp_path / 'tfds'}",
        timeout=None,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    sampling = demo.sampling_settings()
    captions = single_captions(256)
    pipe = UnCLIP.load(tmp_path / "work" / "pipeline")
    images = pipe.generate(
        captions, 1, seed=sampling.seed + 1, **options(sampling, GenerateOptions)
    )
    figures = oracle_accuracy(images, captions)
    print(
        f"folder chain: {figures}; demo: colour {reference['oracle_colour']}, "
        f"colour+shape {reference['oracle_colour_shape']}"
    )
    for name in ("oracle_colour", "oracle_colour_shape"):
        assert figures[name] >= reference[name] - 0.05, (name, figures, reference[name])
