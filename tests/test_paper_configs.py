"""The paper configs say where they depart from their papers (Ramesh et al. 2022; for DALL·E's
dVAE and transformer, Ramesh et al. 2021), and their sizes are the papers'.

Every `configs/*_paper.py` has a module-level `DEVIATIONS` list of `base.Deviation`: the named
config key holds exactly the stated "ours" (or, for a choice made in code, the named code exists
and its parameter's default is "ours"). Each model, built by its training task from the config
as `unclip train` builds it, has within 10% of the paper's parameter count (`jax.eval_shape` of the
task's init: shapes only, nothing allocated).
"""

import importlib
import inspect
import math
import re
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base

CONFIG_DIR = Path(__file__).parents[1] / "configs"
PAPER = sorted(p.stem for p in CONFIG_DIR.glob("*_paper.py"))
# Table 3 model sizes.
TABLE_3_PARAMS = {
    "ar_prior_paper": 1.0e9,
    "prior_paper": 1.0e9,
    "decoder_paper": 3.5e9,
    "upsampler256_paper": 700e6,
    "upsampler1024_paper": 300e6,
}
# DALL·E (2021): the transformer's 12B; the dVAE as OpenAI released it (dall_e 0.1).
DALLE_PARAMS = {"dvae_paper": 97.6e6, "dalle_paper": 12e9}
PAPER_PARAMS = {**TABLE_3_PARAMS, **DALLE_PARAMS}
# Chips of the TPU slices the configs name settings for (`SLICES`).
SLICE_CHIPS = {"v5p-128": 64, "v5e-256": 256}
CODE = re.compile(r"^(?P<module>[\w.]+):(?P<name>[\w.]+)(\((?P<parameter>\w+)\))?$")


def _module(name: str):
    return importlib.import_module(f"configs.{name}")


def _lookup(config, key: str):
    value = config
    for part in key.split("."):
        assert part in value, f"no config key {key!r} (missing {part!r})"
        value = value[part]
    return value


def _deviations() -> list:
    return [
        pytest.param(name, d, id=f"{name}:{d.key or d.code}")
        for name in PAPER
        for d in getattr(_module(name), "DEVIATIONS", [])
    ]


def test_every_paper_config_has_deviations_and_a_paper_size():
    assert sorted(PAPER_PARAMS) == PAPER
    for name in PAPER:
        deviations = getattr(_module(name), "DEVIATIONS", None)
        assert isinstance(deviations, list), f"{name} has no module-level DEVIATIONS list"
        assert all(isinstance(d, base.Deviation) for d in deviations), name
        assert all(d.why and d.paper != d.ours for d in deviations), name


@pytest.mark.parametrize(("name", "deviation"), _deviations())
def test_deviation_names_what_holds_ours(name, deviation):
    if deviation.key:
        assert not deviation.code, f"{name}: give a config key or code, not both"
        value = _lookup(_module(name).get_config(), deviation.key)
        assert type(value) is type(deviation.ours) and value == deviation.ours, (
            f"{name}: {deviation.key} is {value!r}, DEVIATIONS says {deviation.ours!r}"
        )
        return
    match = CODE.match(deviation.code)
    assert match, f"{name}: code must be 'module:name' or 'module:function(parameter)'"
    target = importlib.import_module(match["module"])
    for part in match["name"].split("."):
        target = getattr(target, part)
    if match["parameter"]:
        default = inspect.signature(target).parameters[match["parameter"]].default
        assert default == deviation.ours, f"{name}: {deviation.code} defaults to {default!r}"


@pytest.mark.parametrize("name", [n for n in PAPER if hasattr(_module(n), "SLICES")])
def test_slice_settings_cover_the_slice_and_split_the_batch(name):
    """`get_config(<slice>)`: a mesh over exactly the slice's chips, the batch split over its
    data axes and the micro-batches, the remat named; everything else as the paper config."""
    module = _module(name)
    assert sorted(module.SLICES) == sorted(SLICE_CHIPS)
    paper = module.get_config()
    for slice_name, chips in SLICE_CHIPS.items():
        config = module.get_config(slice_name)
        mesh, accum = dict(config.mesh), config.train.grad_accum_steps
        assert math.prod(mesh.values()) == chips, (slice_name, mesh)
        assert config.train.batch_size % (mesh["data"] * mesh["fsdp"] * accum) == 0
        assert base.block_remat(config) == module.SLICES[slice_name]["remat"]
        config.mesh, config.train.grad_accum_steps = paper.mesh, paper.train.grad_accum_steps
        base.set_remat(config, base.block_remat(paper))
        assert config.to_dict() == paper.to_dict(), slice_name


def _spec(*shape: int, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def _prior_example(model) -> dict:
    return dict(
        image_embedding=_spec(1, model.get("embed_dim", model.text_embed_dim)),
        text_embedding=_spec(1, model.text_embed_dim),
        token_states=_spec(1, model.num_tokens, model.token_dim),
        text_mask=_spec(1, model.num_tokens, dtype=jnp.bool_),
    )


def _prior_task(config):
    from unclip_jax.models.prior import EmbeddingNormalizer
    from unclip_jax.train import prior_task

    normalizer = EmbeddingNormalizer.create(config.embedding_norm, config.model.embed_dim)
    return prior_task.build_task(config, normalizer), _prior_example(config.model)


def _ar_prior_task(config):
    """The AR prior's task with a quantizer of the config's sizes (values are never read)."""
    from unclip_jax.models.pca_quantizer import PCAQuantizer, UniformQuantizer
    from unclip_jax.train import ar_prior_task

    q, dim = config.quantizer, config.model.text_embed_dim
    zeros, ones = jnp.zeros((q.num_components,)), jnp.ones((q.num_components,))
    pca = PCAQuantizer(
        mean=jnp.zeros((dim,)),
        components=jnp.zeros((q.num_components, dim)),
        explained_variance=ones,
        quantizer=UniformQuantizer(zeros, ones, q.num_buckets),
    )
    dot = UniformQuantizer(jnp.zeros((1,)), jnp.ones((1,)), q.num_dot_buckets)
    quantizers = ar_prior_task.ARQuantizers(pca, dot, jnp.zeros((), jnp.int32))
    return ar_prior_task.build_task(config, quantizers), _prior_example(config.model)


def _decoder_task(config):
    from unclip_jax.train import decoder_task

    length = config.model.caption_transformer.max_length
    size = config.image_size
    example = dict(
        image=_spec(1, size, size, 3),
        image_embedding=_spec(1, config.image_embed_dim),
        tokens=_spec(1, length, dtype=jnp.int32),
        mask=_spec(1, length, dtype=jnp.int32),
    )
    return decoder_task.build_task(config, clip=None), example


def _upsampler_task(config):
    from unclip_jax.train import upsampler_task

    return upsampler_task.build_task(config), dict(image=_spec(1, 8, 8, 3))


def _dvae_task(config):
    from unclip_jax.train import dvae_task

    size = config.data.image_size
    return dvae_task.build_task(config, None), dict(image=_spec(1, size, size, 3))


def _dalle_task(config):
    """The transformer over the paper dVAE's codes (its parameters are never read)."""
    from configs import dvae_paper
    from unclip_jax.models.dvae import DVAEConfig, FrozenDVAE
    from unclip_jax.train import dalle_task

    fields = {k: v for k, v in dvae_paper.get_config().model.items() if k != "dtype"}
    tokenizer = types.SimpleNamespace(
        vocab_size=config.tokenizer.vocab_size, context_length=config.tokenizer.context_length
    )
    task = dalle_task.build_task(config, tokenizer, FrozenDVAE(DVAEConfig(**fields)))
    length, size = config.tokenizer.context_length, config.data.image_size
    example = dict(
        image=_spec(1, size, size, 3),
        tokens=_spec(1, length, dtype=jnp.int32),
        mask=_spec(1, length, dtype=jnp.bool_),
    )
    return task, example


TASKS = {
    "dvae": _dvae_task,
    "dalle": _dalle_task,
    "ar_prior": _ar_prior_task,
    "diffusion_prior": _prior_task,
    "decoder": _decoder_task,
    "upsampler": _upsampler_task,
}


@pytest.mark.parametrize("name", PAPER)
def test_parameter_count_is_the_papers(name):
    config = _module(name).get_config()
    task, example = TASKS[config.trainer](config)
    shapes = jax.eval_shape(task.init, jax.random.key(0), example)
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
    target = PAPER_PARAMS[name]
    assert abs(count - target) / target < 0.1, f"{name}: {count / 1e6:.0f}M, paper {target:.2g}"
