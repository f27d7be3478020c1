"""UnCLIP on tiny random stages: compiled once per batch bucket, device-count invariant,
bad input refused before any compute, and the invariants of variations / interpolation."""

import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1]))
import tiny_pipeline

from unclip_jax import flop_meter
from unclip_jax.pipelines import arguments, image_operations
from unclip_jax.pipelines import images as pipeline_images
from unclip_jax.pipelines.unclip import UnCLIP
from unclip_jax.text.tokenizer import CaptionTruncatedWarning

PROMPTS = ["a red circle", "a large blue square"]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    return tiny_pipeline.build(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pipe(pipeline_dir) -> UnCLIP:
    return UnCLIP.load(pipeline_dir, num_devices=1)


@pytest.fixture(scope="module")
def first(pipe) -> dict:
    return pipe.generate_float(PROMPTS, 2, seed=0)


def test_generate_compiles_each_stage_once(pipe, first):
    assert first["images"].shape == (4, 16, 16, 3)
    assert np.all(np.abs(first["images"]) <= 1.0)
    counts = pipe.compiled_programs()
    images = pipe.generate(
        ["a small green triangle", "a red square"],
        2,
        seed=7,
        prior_steps=3,
        decoder_steps=2,
        prior_guidance=1.5,
        decoder_guidance=2.5,
    )
    assert images.dtype == np.uint8 and images.shape == (4, 16, 16, 3)
    assert pipe.compiled_programs() == counts
    assert counts["prior"] == counts["decoder"] == counts["upsampler_0"] == 1
    assert not np.array_equal(images, pipeline_images.to_uint8(first["images"]))


def test_same_seed_same_images(pipe, first):
    again = pipe.generate_float(PROMPTS, 2, seed=0)
    np.testing.assert_array_equal(again["images"], first["images"])


def test_eight_devices_equal_one(pipeline_dir, first):
    pipe8 = UnCLIP.load(pipeline_dir)
    assert pipe8.num_devices == 8
    out = pipe8.generate_float(PROMPTS, 2, seed=0)
    np.testing.assert_allclose(out["image_embed"], first["image_embed"], atol=1e-4)
    np.testing.assert_allclose(out["images"], first["images"], atol=1e-3)


def test_the_decoder_reads_given_or_null_image_embeddings(pipe, first):
    """Given z_i skip the prior: the prior's own z_i give its images back; the null z_i is the
    decoder's learned one (the same images as that vector given as z_i)."""
    given = pipe.generate_float(PROMPTS, 2, seed=0, image_embeds=first["image_embed"])
    np.testing.assert_allclose(given["images"], first["images"], atol=1e-6)
    null = pipe.generate_float(PROMPTS, 2, seed=0, null_image=True)
    assert not np.allclose(null["images"], first["images"], atol=1e-2)
    [learned] = [
        np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(pipe.decoder.params)
        if "null_image_embed" in jax.tree_util.keystr(path)
    ]
    as_given = np.broadcast_to(learned.reshape(1, -1), first["image_embed"].shape)
    again = pipe.generate_float(PROMPTS, 2, seed=0, image_embeds=as_given)
    np.testing.assert_allclose(null["images"], again["images"], atol=1e-6)


def test_empty_prompt_is_unconditional(pipe):
    """An empty prompt ignores the prior's guidance scale (it samples with scale 0)."""
    low = pipe.generate_float(["", "a red circle", "", ""], seed=3, prior_guidance=1.0)
    high = pipe.generate_float(["", "a red circle", "", ""], seed=3, prior_guidance=6.0)
    np.testing.assert_allclose(low["image_embed"][0], high["image_embed"][0], atol=1e-5)
    assert not np.allclose(low["image_embed"][1], high["image_embed"][1], atol=1e-3)


def test_long_prompt_is_truncated_with_a_warning(pipe):
    with pytest.warns(CaptionTruncatedWarning):
        pipe.generate(["a red circle " * 20] * 4, seed=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=[]), "at least one prompt"),
        (dict(decoder_guidance=-1.0), "decoder_guidance must be a finite number >= 0"),
        (dict(prior_guidance=-0.5), "prior_guidance must be a finite number >= 0"),
        (dict(decoder_steps=0), r"decoder_steps must be in \[1, 100\]"),
        (dict(prior_steps=-3), r"prior_steps must be in \[1, 100\]"),
        (dict(upsampler_steps=101), r"upsampler_steps must be in \[1, 100\]"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt must be an integer >= 1"),
        (dict(rerank_candidates=0), "rerank_candidates must be an integer >= 1"),
        (dict(image_embeds=np.zeros((3, 16))), r"image_embeds must be finite \[2, 16\]"),
        (dict(image_embeds=np.zeros((4, 16)), null_image=True), "not both"),
        (dict(null_image="yes"), "null_image must be True or False"),
    ],
)
def test_bad_arguments_fail_before_compute(pipe, first, kwargs, message):
    counts = pipe.compiled_programs()
    args = dict(prompts=PROMPTS, **{k: v for k, v in kwargs.items() if k != "prompts"})
    if "prompts" in kwargs:
        args["prompts"] = kwargs["prompts"]
    with pytest.raises(ValueError, match=message):
        pipe.generate(**args)
    assert pipe.compiled_programs() == counts


def test_missing_stage_is_named(pipeline_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(pipeline_dir, broken)
    shutil.rmtree(broken / "decoder")
    with pytest.raises(FileNotFoundError, match="missing stage 'decoder'"):
        UnCLIP.load(broken)


def test_unreadable_images_are_refused(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8) + 90).save(tmp_path / "whole.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    assert pipeline_images.load_image(tmp_path / "whole.png").shape == (32, 32, 3)
    for bad in (text, cut):
        with pytest.raises(ValueError, match="is not a readable image"):
            pipeline_images.load_image(bad)


def test_variations_and_interpolation_share_the_decoder_noise(pipe, first):
    image = pipeline_images.to_uint8(first["images"][0])
    variations = pipe.variations(image, n=4, seed=1, x_T="random")
    assert variations.shape == (4, 16, 16, 3)
    assert len({v.tobytes() for v in variations}) == 4
    other = pipeline_images.to_uint8(first["images"][2])
    frames = pipe.interpolate(image, other, n=4, seed=1, x_T="random")
    # Frame 0 decodes z_a with noise row 0, as the first variation does.
    assert np.abs(frames[0].astype(int) - variations[0].astype(int)).max() <= 1
    for x_T in ("random", "inverted"):
        same = pipe.interpolate(image, image, n=4, seed=1, x_T=x_T)
        assert np.abs(same.astype(int) - same[:1].astype(int)).max() <= 1


def test_text_diff(pipe, first):
    image = pipeline_images.to_uint8(first["images"][0])
    frames = pipe.text_diff(image, "a red circle", "a blue circle", [0.0, 0.2, 0.4, 0.6], seed=2)
    assert frames.shape == (4, 16, 16, 3)
    with pytest.raises(ValueError, match="thetas must be"):
        pipe.text_diff(image, "a red circle", "a blue circle", [1.5])
    with pytest.raises(ValueError, match="same text embedding"):
        pipe.text_diff(image, "a red circle", "a red circle", [0.5])


def test_slerp_and_buckets():
    a, b = (
        image_operations.unit(np.array([1.0, 0.0, 0.0])),
        image_operations.unit(np.array([1.0, 1.0, 0])),
    )
    path = image_operations.slerp(a, b, np.linspace(0, 1, 5))
    np.testing.assert_allclose(np.linalg.norm(path, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(path[[0, -1]], [a, b], atol=1e-12)
    assert [arguments.bucket_size(n, 1) for n in (1, 3, 4, 5, 64)] == [1, 4, 4, 8, 64]
    assert [arguments.bucket_size(n, 8) for n in (1, 9, 24)] == [8, 16, 32]


def test_one_image_on_two_devices_splits_its_guided_rows(pipeline_dir, pipe):
    """One image on two devices: its row is copied to both, and each guided step runs the
    conditional row on one device and the unconditional row on the other, so the guided programs
    (prior, decoder) do the FLOPs of one device's run (a row padded to one per device would
    double them) and give the same image."""
    with flop_meter.metering() as one_device:
        alone = pipe.generate_float(PROMPTS[:1], seed=5)
    pipe2 = UnCLIP.load(pipeline_dir, num_devices=2)
    with flop_meter.metering() as two_devices:
        split = pipe2.generate_float(PROMPTS[:1], seed=5)
    np.testing.assert_allclose(split["images"], alone["images"], atol=1e-3)
    guided = ["make_prior_sampler.<locals>.sample", "DecoderChain._run_sample"]
    for name in guided:
        assert two_devices.per_program[name] <= 1.05 * one_device.per_program[name], name
    # unguided: the copied row runs on both devices
    upsampler = "UpsamplerChain._run_sample"
    assert two_devices.per_program[upsampler] > 1.9 * one_device.per_program[upsampler]
