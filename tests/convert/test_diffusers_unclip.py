"""A tiny random diffusers `UnCLIPPipeline` (Karlo's layout), saved with `save_pretrained`,
converted by `convert-karlo`: every module matches PyTorch (≤ 1e-4); `UnCLIP.load` runs the
checkpoint with Karlo's settings and, fed the same initial latents and the noise diffusers draws,
produces the same images (≤ 1e-3); `unclip generate` writes its images. Errors name the component
and the tensor."""

import json
import shutil
import sys
from pathlib import Path
from unittest import mock

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
from absl import flags
from diffusers import PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.pipelines.deprecated.unclip import UnCLIPPipeline
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

sys.path.insert(0, str(Path(__file__).parent))
import karlo_full_size

from unclip_jax import cli
from unclip_jax.commands.convert_karlo import convert
from unclip_jax.convert.diffusers_files import read_weights
from unclip_jax.convert.diffusers_unclip import convert_karlo, unet_config_from_diffusers
from unclip_jax.convert.karlo_checkpoint import load_karlo, save_karlo
from unclip_jax.diffusion.schedules import cosine_betas
from unclip_jax.pipelines.outputs import enable_compilation_cache
from unclip_jax.pipelines.unclip import UnCLIP
from unclip_jax.text.tokenizer import load_tokenizer

EMBED, CONTEXT, LENGTH, SIZE, SR_SIZE = 16, 24, 8, 16, 32
PROMPTS = ["red circle", "a red cir"]
NOISE = "diffusers.schedulers.scheduling_unclip.randn_tensor"


def _tokenizer(directory) -> CLIPTokenizer:
    symbols = list(bytes_to_unicode().values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), "re", "red</w>", "ci", "cir"]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\nr e\nre d</w>\nc i\nci r\n")
    return CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=LENGTH
    )


def _randomize(module: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(scale * torch.randn(param.shape, generator=generator))
            if name == "clip_std":
                param.copy_(0.5 + torch.rand(param.shape, generator=generator))
    return module.eval()


def _pipeline(tmp) -> UnCLIPPipeline:
    """Karlo's component layout at a tiny size: 16 px decoder, 16 → 32 px super-resolution."""
    tokenizer = _tokenizer(tmp)
    vocab = len(tokenizer.get_vocab())
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=vocab,
            hidden_size=EMBED,
            projection_dim=EMBED,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=LENGTH,
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=vocab - 1,
        )
    )
    prior = PriorTransformer(
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=2,
        embedding_dim=EMBED,
        num_embeddings=LENGTH,
    )
    text_proj = UnCLIPTextProjModel(
        clip_embeddings_dim=EMBED, time_embed_dim=64, cross_attention_dim=CONTEXT
    )
    decoder = UNet2DConditionModel(
        sample_size=SIZE,
        layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=6,
        cross_attention_dim=CONTEXT,
        attention_head_dim=8,
        class_embed_type="identity",
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=8,
    )
    super_res = dict(
        sample_size=SR_SIZE,
        layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D",) * 2,
        up_block_types=("ResnetUpsampleBlock2D",) * 2,
        block_out_channels=(16, 32),
        in_channels=6,
        out_channels=3,
        add_attention=False,
        norm_num_groups=8,
    )
    models = dict(
        text_encoder=text_encoder,
        prior=prior,
        text_proj=text_proj,
        decoder=decoder,
        super_res_first=UNet2DModel(**super_res),
        super_res_last=UNet2DModel(**super_res),
    )
    for seed, module in enumerate(models.values()):
        _randomize(module, seed)
    return UnCLIPPipeline(
        tokenizer=tokenizer,
        prior_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
        ),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        super_res_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="epsilon"
        ),
        **models,
    )


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: a second torch thread only contends for the CPU (10× slower when busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def karlo(tmp_path_factory):
    """(diffusers pipeline, its save_pretrained directory, our converted checkpoint)."""
    tmp = tmp_path_factory.mktemp("karlo")
    pipe = _pipeline(tmp)
    pipe.save_pretrained(tmp / "diffusers")
    convert(tmp / "diffusers", tmp / "ours")
    return pipe, tmp / "diffusers", load_karlo(tmp / "ours"), tmp / "ours"


def _nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return np.moveaxis(x.numpy(), 1, -1)


def test_text_encoder_and_tokenizer_match(karlo):
    pipe, _, ours, out = karlo
    ids, mask = load_tokenizer(out / "tokenizer")(PROMPTS)
    hf = pipe.tokenizer(PROMPTS, padding="max_length", max_length=LENGTH, return_tensors="pt")
    np.testing.assert_array_equal(ids, hf.input_ids.numpy())
    np.testing.assert_array_equal(mask, hf.attention_mask.numpy())
    embed, aux = ours.text_encoder.apply({"params": ours.params["text_encoder"]}, ids)
    with torch.no_grad():
        want = pipe.text_encoder(hf.input_ids)
    np.testing.assert_allclose(embed, want.text_embeds.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(aux["hidden_states"], want.last_hidden_state, atol=1e-4, rtol=0)


def test_prior_matches(karlo):
    pipe, _, ours, _ = karlo
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, EMBED)).astype(np.float32)
    text = rng.standard_normal((2, EMBED)).astype(np.float32)
    tokens = rng.standard_normal((2, LENGTH, EMBED)).astype(np.float32)
    mask = np.arange(LENGTH)[None] < np.array([[LENGTH], [3]])
    t = np.array([999, 42])
    got = jax.jit(ours.prior.apply)({"params": ours.params["prior"]}, x, t, text, tokens, mask)
    with torch.no_grad():
        want = pipe.prior(
            torch.from_numpy(x),
            torch.from_numpy(t),
            proj_embedding=torch.from_numpy(text),
            encoder_hidden_states=torch.from_numpy(tokens),
            attention_mask=torch.from_numpy(mask),
        ).predicted_image_embedding
        want_z = pipe.prior.post_process_latents(want)
    assert np.abs(want.numpy()).max() > 0.1
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours.normalizer.denormalize(got), want_z.numpy(), atol=1e-4, rtol=0)


def test_decoder_and_super_res_match(karlo):
    pipe, _, ours, _ = karlo
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    image = rng.standard_normal((2, EMBED)).astype(np.float32)
    caption = rng.standard_normal((2, EMBED)).astype(np.float32)
    states = rng.standard_normal((2, LENGTH, EMBED)).astype(np.float32)
    mask = np.arange(LENGTH)[None] < np.array([[LENGTH], [3]])
    t = np.array([999, 42])
    got = jax.jit(ours.decoder.apply)(
        {"params": ours.params["decoder"]},
        x,
        t,
        image,
        caption_states=states,
        caption_embed=caption,
        caption_mask=mask,
    )
    with torch.no_grad():
        context, added = pipe.text_proj(
            image_embeddings=torch.from_numpy(image),
            prompt_embeds=torch.from_numpy(caption),
            text_encoder_hidden_states=torch.from_numpy(states),
            do_classifier_free_guidance=False,
        )
        attention = torch.nn.functional.pad(torch.from_numpy(mask), (4, 0), value=True)
        want = pipe.decoder(
            _nchw(x), torch.from_numpy(t), context, class_labels=added, attention_mask=attention
        ).sample
    assert np.abs(want.numpy()).max() > 0.1
    np.testing.assert_allclose(got, _nhwc(want), atol=1e-4, rtol=0)
    high = rng.standard_normal((2, SR_SIZE, SR_SIZE, 3)).astype(np.float32)
    low = rng.uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    upscaled = torch.nn.functional.interpolate(
        _nchw(low), size=[SR_SIZE, SR_SIZE], mode="bicubic", align_corners=False, antialias=True
    )
    super_res = jax.jit(ours.super_res.apply)
    for name in ("super_res_first", "super_res_last"):
        got = super_res({"params": ours.params[name]}, high, low, t)
        with torch.no_grad():
            want = getattr(pipe, name)(torch.cat([_nchw(high), upscaled], 1), torch.from_numpy(t))
        np.testing.assert_allclose(got, _nhwc(want.sample), atol=1e-4, rtol=0)


def _float64_tables(scheduler: UnCLIPScheduler) -> None:
    """The scheduler's ᾱ tables in float64 from the exact cosine (the samples stay float32).

    With its float32 tables, α = 1 − (1 − ᾱ_t/ᾱ_prev) cancels at t = 999 (ᾱ ratio ≈ 2e-6, √α off
    by ~3%), and this random tiny pipeline, guided at 8, carries that to 0.07 in the images; with
    exact tables the two chains agree to ~2e-6. Karlo's own code keeps its tables in float64, as
    we do.
    """
    scheduler.betas = torch.from_numpy(cosine_betas(scheduler.config.num_train_timesteps))
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.one = scheduler.one.double()


def _diffusers_images(pipe, latents):
    """diffusers' pipeline with Karlo's settings; returns (images [B, H, W, 3], noise per step)."""
    for scheduler in (pipe.prior_scheduler, pipe.decoder_scheduler, pipe.super_res_scheduler):
        _float64_tables(scheduler)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    drawn = []

    def record(shape, generator=None, **kwargs):
        drawn.append(torch.randn(shape, generator=generator))
        return drawn[-1]

    with mock.patch(NOISE, record), torch.no_grad():
        images = pipe(
            PROMPTS,
            prior_num_inference_steps=25,
            decoder_num_inference_steps=25,
            super_res_num_inference_steps=7,
            prior_guidance_scale=4.0,
            decoder_guidance_scale=8.0,
            prior_latents=torch.from_numpy(latents["prior"]),
            decoder_latents=_nchw(latents["decoder"]),
            super_res_latents=_nchw(latents["super_res"]),
            generator=generator,
            output_type="np",
        ).images
    return images, [x.numpy() if x.ndim == 2 else _nhwc(x) for x in drawn]


def _rows(drawn) -> np.ndarray:
    """diffusers' per-step draws (sampling order) as rows: [B, steps − 1, …]."""
    return np.stack(drawn, axis=1)


def test_karlo_sampling_matches_diffusers_pipeline(karlo):
    """`UnCLIP.load` on the converted checkpoint, with its defaults (Karlo's: prior 25 steps at
    guidance 4, decoder 25 at 8, super-res 7 with the first/last U-Nets), fed diffusers' initial
    latents and per-step noise, gives diffusers' images; loaded in bfloat16, close to them."""
    pipe, _, _, out = karlo
    rng = np.random.default_rng(2)
    batch = len(PROMPTS)
    latents = {
        "prior": rng.standard_normal((batch, EMBED)).astype(np.float32),
        "decoder": rng.standard_normal((batch, SIZE, SIZE, 3)).astype(np.float32),
        "super_res": rng.standard_normal((batch, SR_SIZE, SR_SIZE, 3)).astype(np.float32),
    }
    want, drawn = _diffusers_images(pipe, latents)
    assert len(drawn) == 24 + 24 + 6
    unclip = UnCLIP.load(out, num_devices=1)
    fed = dict(
        latents={
            "prior": latents["prior"],
            "decoder": latents["decoder"],
            "upsampler_0": latents["super_res"],
        },
        noise={
            "prior": _rows(drawn[:24]),
            "decoder": _rows(drawn[24:48]),
            "upsampler_0": _rows(drawn[48:]),
        },
    )
    got = unclip.generate_float(PROMPTS, **fed)["images"]
    got = got * 0.5 + 0.5
    assert want.std() > 0.05  # not a flat image
    print(f"max |ours − diffusers| = {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    # In bfloat16 (parameters and compute; the chains float32), within its rounding.
    half = UnCLIP.load(out, num_devices=1, dtype="bfloat16").generate_float(PROMPTS, **fed)
    error = np.abs(half["images"] * 0.5 + 0.5 - want)
    print(f"bfloat16: mean |ours − diffusers| = {error.mean():.2e}, max {error.max():.2e}")
    assert error.mean() < 0.02


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    """A persistent compilation cache (as `unclip generate` turns on): the command reuses the
    programs the in-process pipeline compiled for the same batch bucket."""
    directory = tmp_path_factory.mktemp("xla_cache")
    enable_compilation_cache(str(directory))
    return directory


def test_karlo_pipeline_compiles_once_and_refuses_image_inputs(karlo, xla_cache):
    """New prompts, seeds and scales reuse each stage's program; what needs the CLIP image
    tower (absent from Karlo) fails before any compute."""
    _, _, _, out = karlo
    unclip = UnCLIP.load(out, num_devices=1)
    first = unclip.generate(PROMPTS, seed=0)
    assert first.shape == (2, SR_SIZE, SR_SIZE, 3) and first.dtype == np.uint8
    counts = unclip.compiled_programs()
    assert counts["prior"] == counts["decoder"] == counts["upsampler_0"] == 1
    again = unclip.generate(
        ["a red cir", ""], seed=3, prior_guidance=2.0, decoder_guidance=3.0, decoder_steps=5
    )
    assert unclip.compiled_programs() == counts
    assert not np.array_equal(again, first)
    image = np.zeros((SR_SIZE, SR_SIZE, 3), np.uint8)
    for call in (
        lambda: unclip.variations(image),
        lambda: unclip.interpolate(image, image),
        lambda: unclip.text_diff(image, "red circle", "a red cir"),
        lambda: unclip.generate(PROMPTS, rerank_candidates=2),
    ):
        with pytest.raises(ValueError, match="this checkpoint has no image encoder"):
            call()
    with pytest.raises(ValueError, match=r"prior_steps must be in \[2, 1000\], got 1"):
        unclip.generate(PROMPTS, prior_steps=1)
    with pytest.raises(
        ValueError, match=r"noise\['decoder'\] must have shape \(2, 24, 16, 16, 3\)"
    ):
        unclip.generate_float(PROMPTS, noise={"decoder": np.zeros((2, 25, SIZE, SIZE, 3))})
    assert unclip.compiled_programs() == counts


def test_unclip_generate_runs_a_karlo_checkpoint(karlo, xla_cache, tmp_path):
    _, _, _, out = karlo
    images = tmp_path / "images"
    flags.FLAGS.unparse_flags()
    try:
        cli.run(
            [
                "unclip",
                "generate",
                "red circle",
                "",
                "--num_images=1",
                f"--checkpoint={out}",
                f"--out={images}",
                f"--compilation_cache={xla_cache}",
                "--num_devices=1",
            ]
        )
    except SystemExit as exit_:
        assert not exit_.code
    finally:
        flags.FLAGS.unparse_flags()
    written = sorted(p.name for p in images.glob("0*.png"))
    assert written == ["000_00.png", "001_00.png"]
    for name in written:
        assert np.asarray(Image.open(images / name)).shape == (SR_SIZE, SR_SIZE, 3)


@pytest.fixture
def diffusers_copy(karlo, tmp_path):
    _, diffusers_dir, _, _ = karlo
    return shutil.copytree(diffusers_dir, tmp_path / "diffusers")


def _edit_weights(path, edit):
    state = safetensors.torch.load_file(path)
    edit(state)
    safetensors.torch.save_file(state, path)


def test_missing_component_and_weights_are_named(diffusers_copy):
    shutil.rmtree(diffusers_copy / "super_res_last")
    with pytest.raises(FileNotFoundError, match="super_res_last: component missing"):
        convert_karlo(diffusers_copy)
    shutil.copytree(diffusers_copy / "super_res_first", diffusers_copy / "super_res_last")
    (diffusers_copy / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="text_encoder: no weights in"):
        convert_karlo(diffusers_copy)


def test_missing_tensor_and_mismatched_shape_are_named(diffusers_copy):
    prior = diffusers_copy / "prior" / "diffusion_pytorch_model.safetensors"
    saved = safetensors.torch.load_file(prior)
    _edit_weights(prior, lambda state: state.pop("prd_embedding"))
    with pytest.raises(ValueError, match="prior: PriorTransformer tensor prd_embedding is missing"):
        convert_karlo(diffusers_copy)
    safetensors.torch.save_file(saved, prior)
    key = "down_blocks.1.attentions.0.add_k_proj.weight"
    _edit_weights(
        diffusers_copy / "decoder" / "diffusion_pytorch_model.safetensors",
        lambda state: state.__setitem__(key, torch.zeros(7, 3)),
    )
    with pytest.raises(ValueError, match=rf"decoder: tensor '{key}' of shape \(7, 3\)"):
        convert_karlo(diffusers_copy)


def test_checkpoint_that_does_not_fit_its_config_is_named(karlo, tmp_path):
    _, _, _, out = karlo
    copy = shutil.copytree(out, tmp_path / "ours")
    config = json.loads((copy / "unclip_karlo.json").read_text())
    config["prior"]["depth"] = 1
    (copy / "unclip_karlo.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"prior: parameter block_1/\S+ should have shape None"):
        load_karlo(copy)


def test_pytorch_bin_weights_read_like_safetensors(karlo, tmp_path):
    pipe, diffusers_dir, _, _ = karlo
    torch.save(pipe.prior.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    from_bin = read_weights(tmp_path, "prior")
    from_safetensors = read_weights(diffusers_dir / "prior", "prior")
    assert sorted(from_bin) == sorted(from_safetensors)
    for name, value in from_safetensors.items():
        np.testing.assert_array_equal(from_bin[name], value)


def test_karlo_full_size_configs_translate():
    """Karlo v1-alpha's decoder and super-res configs (models built on torch's meta device)
    give the U-Nets whose weights map one to one (`test_diffusers_unet`)."""
    with torch.device("meta"):
        decoder = UNet2DConditionModel(**karlo_full_size.DECODER)
        super_res = UNet2DModel(**karlo_full_size.SUPER_RES)
    config = unet_config_from_diffusers(decoder.config, "decoder", True)
    assert config == karlo_full_size.DECODER_UNET
    config = unet_config_from_diffusers(super_res.config, "super_res_first", False)
    assert config == karlo_full_size.SUPER_RES_UNET
    with pytest.raises(ValueError, match="decoder: config flip_sin_to_cos must be True"):
        unet_config_from_diffusers({**decoder.config, "flip_sin_to_cos": False}, "decoder", True)
    bad = {**super_res.config, "down_block_types": ["AttnDownBlock2D"] * 4}
    with pytest.raises(ValueError, match="super_res_first: down block 0 type 'AttnDownBlock2D'"):
        unet_config_from_diffusers(bad, "super_res_first", False)


def test_save_refuses_to_replace_other_directories(karlo, tmp_path):
    _, _, ours, _ = karlo
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a Karlo checkpoint"):
        save_karlo(ours, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
