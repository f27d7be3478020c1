"""Every experiment config loads the way `unclip train --config` loads it, and a mistyped
`--config.` override is rejected with the key named; the paper-size configs name their trainers,
shrink under `smoke`, and one of them trains two steps through its trainer."""

import importlib
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from PIL import Image

from unclip_jax.train import trainers

CONFIG_DIR = Path(__file__).parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.py"))
PAPER = [p for p in CONFIGS if p.stem.endswith("_paper")]
# Each paper config's trainer (Ramesh et al. 2022: the two priors, decoder, two upsamplers;
# Ramesh et al. 2021: the dVAE and the transformer of DALL·E).
PAPER_TRAINERS = {
    "ar_prior_paper": "ar_prior",
    "prior_paper": "diffusion_prior",
    "decoder_paper": "decoder",
    "upsampler256_paper": "upsampler",
    "upsampler1024_paper": "upsampler",
    "dvae_paper": "dvae",
    "dalle_paper": "dalle",
}


def parse(argv: list[str]):
    """Parses argv with a fresh flag set, as absl does for `unclip train`."""
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "config file", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_names_a_known_trainer(path):
    config = parse(["unclip train", f"--config={path}"])
    assert config.trainer == "" or config.trainer in trainers.TRAINERS, config.trainer
    assert config.train.total_steps > 0 and config.train.batch_size > 0


def test_override_is_applied_and_typo_names_the_key():
    base = CONFIGS[[p.name for p in CONFIGS].index("base.py")]
    config = parse(["unclip train", f"--config={base}", "--config.optimizer.peak_lr=3e-4"])
    assert config.optimizer.peak_lr == 3e-4
    with pytest.raises(AttributeError, match=r"peak_lrr.*Did you mean \"peak_lr\""):
        parse(["unclip train", f"--config={base}", "--config.optimizer.peak_lrr=3e-4"])


def test_every_paper_config_is_listed():
    assert sorted(p.stem for p in PAPER) == sorted(PAPER_TRAINERS)


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_config_names_its_trainer_and_smoke_shrinks_it(path):
    full = parse(["unclip train", f"--config={path}"])
    small = parse(["unclip train", f"--config={path}:smoke"])
    assert full.trainer == small.trainer == PAPER_TRAINERS[path.stem]
    trainers.get_trainer(full.trainer)  # importable
    assert full.model.dtype == "bfloat16" and small.model.dtype == "float32"
    assert full.train.total_steps >= 400_000 and full.train.batch_size >= 512  # DALL·E: 430k
    assert small.train.total_steps <= 10 and small.train.batch_size <= 8
    assert small.optimizer.peak_lr == full.optimizer.peak_lr
    width = next(k for k in ("width", "unet", "n_hid") if k in full.model)
    assert small.model[width] != full.model[width]
    with pytest.raises(ValueError, match=r"'smoke'.*, got 'tiny'"):
        importlib.import_module(f"configs.{path.stem}").get_config("tiny")


def _write_image_folder(directory: Path, count: int, size: int) -> None:
    """`count` random RGB images with a caption file beside each (the folder_captions layout)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    for index in range(count):
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / f"{index:02d}.png")
        (directory / f"{index:02d}.txt").write_text(f"picture {index}\n")


def _smoke(name: str):
    return parse(["unclip train", f"--config={CONFIG_DIR / name}.py:smoke"])


def _train_two_steps(config, workdir: Path, evaluate: bool = True):
    """Two steps through the config's registered trainer; with `evaluate`, an evaluation and
    (where the config draws them) a sample grid at step 2: more compiled programs."""
    every = 2 if evaluate else 0
    config.train.update(eval_every=every, sample_every=every if config.train.sample_every else 0)
    config.train.total_steps = 2
    config.checkpoint.every_steps = 2
    state = trainers.get_trainer(config.trainer)(config, str(workdir))
    assert int(state.step) == 2 and int(state.nonfinite_total) == 0
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    assert (workdir / "checkpoints" / "2").is_dir()
    return state


def _use_image_folder(config, tmp_path: Path, size: int = 32) -> None:
    """Points `config.data` at a fresh folder of 32 captioned random images (the paper configs'
    folder_captions source, half of them held out for evaluation), built under tmp_path."""
    _write_image_folder(tmp_path / "images", count=32, size=size)
    config.data.update(source=f"folder_captions:{tmp_path / 'images'}", image_size=size)
    config.data.update(data_dir=str(tmp_path / "tfds"), validation_fraction=0.5)
    config.data.eval_split = "validation"


@pytest.mark.slow
def test_upsampler256_paper_smoke_trains_two_steps_from_an_image_folder(tmp_path):
    """The paper's data path (an image folder) through the registered trainer, at CPU size."""
    config = _smoke("upsampler256_paper")
    _use_image_folder(config, tmp_path)
    _train_two_steps(config, tmp_path / "work")
    assert (tmp_path / "work" / "samples" / "step_2.png").is_file()


@pytest.mark.slow
def test_upsampler1024_paper_smoke_trains_two_steps(tmp_path):
    config = _smoke("upsampler1024_paper")
    assert config.corruption == "bsr"
    _use_image_folder(config, tmp_path)
    _train_two_steps(config, tmp_path / "work")
    assert (tmp_path / "work" / "samples" / "step_2.png").is_file()


def test_prior_paper_smoke_trains_two_steps_from_embedding_shards(tmp_path):
    """The cheapest stage through its registered trainer: shards as `unclip embed` writes them."""
    from unclip_jax.data.embedding_shards import EmbeddingShardWriter

    config = _smoke("prior_paper")
    m = config.model
    rng = np.random.default_rng(0)
    count = 24
    text = rng.normal(size=(count, m.text_embed_dim)).astype(np.float32)
    with EmbeddingShardWriter(tmp_path / "shards", shard_size=10) as writer:
        writer.add(
            {
                "image_embedding": text + 0.3 * rng.normal(size=text.shape).astype(np.float32),
                "text_embedding": text,
                "token_states": rng.normal(size=(count, m.num_tokens, m.token_dim)),
                "text_mask": np.arange(m.num_tokens)[None] < rng.integers(3, 9, (count, 1)),
                "text_tokens": rng.integers(0, 100, (count, m.num_tokens)).astype(np.int32),
                "caption": np.array([f"caption {i}" for i in range(count)]),
            }
        )
    config.data.update(train_dir=str(tmp_path / "shards"), eval_dir=str(tmp_path / "shards"))
    _train_two_steps(config, tmp_path / "work")


@pytest.mark.slow
def test_decoder_paper_smoke_trains_two_steps_with_its_caption_transformer(tmp_path):
    import flax.linen as nn
    import jax.numpy as jnp

    from unclip_jax.convert import hf_clip
    from unclip_jax.models.clip import CLIP, clip_config
    from unclip_jax.text import bpe

    config = _smoke("decoder_paper")
    tiny = clip_config("tiny-shapes")
    vision = tiny.vision.__class__(image_size=16, patch_size=8, width=32, layers=1, heads=2)
    clip = tiny.__class__(text=tiny.text, vision=vision, projection_dim=config.image_embed_dim)
    params = CLIP(clip).init(
        jax.random.key(0),
        jnp.zeros((1, clip.text.context_length), jnp.int32),
        jnp.zeros((1, 16, 16, 3)),
    )
    clip_dir = tmp_path / "clip"
    hf_clip.save_clip(clip_dir, clip, {"params": nn.unbox(params["params"])})
    length = config.model.caption_transformer.max_length
    vocab = config.model.caption_transformer.vocab_size
    captions = [f"picture {i}" for i in range(16)]
    bpe.train_bpe(captions, vocab, length).save(clip_dir / hf_clip.TOKENIZER_DIR)
    config.clip_dir = str(clip_dir)
    _use_image_folder(config, tmp_path)
    _train_two_steps(config, tmp_path / "work")
