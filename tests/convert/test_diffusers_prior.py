"""Parity of `DiffusionPrior` with diffusers' `PriorTransformer` (Karlo) on tiny random weights."""

import jax
import numpy as np
import pytest
import torch
from diffusers.models.transformers.prior_transformer import PriorTransformer

from unclip_jax.convert.diffusers_prior import convert_prior_state_dict, prior_from_diffusers_config

BATCH = 3


def _config(heads: int, head_dim: int, embedding_dim: int, num_embeddings: int, **extra) -> dict:
    """A two-layer `PriorTransformer` config (keyword arguments)."""
    return dict(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        num_layers=2,
        embedding_dim=embedding_dim,
        num_embeddings=num_embeddings,
        additional_embeddings=4,
        **extra,
    )


_LAYER_NORMS = dict(norm_in_type="layer", embedding_proj_norm_type="layer")
CONFIGS = {
    "karlo": _config(2, 8, 12, 6),
    "norms": _config(4, 4, 10, 5, embedding_proj_dim=7, time_embed_dim=24, **_LAYER_NORMS),
}


def _torch_prior(config: dict) -> PriorTransformer:
    torch.manual_seed(0)
    prior = PriorTransformer(**config).eval()
    with torch.no_grad():
        for name, param in prior.named_parameters():
            param.copy_(0.3 * torch.randn_like(param))
            if name == "clip_std":
                param.copy_(0.5 + torch.rand_like(param))
    return prior


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def converted(request):
    config = CONFIGS[request.param]
    prior = _torch_prior(config)
    model = prior_from_diffusers_config(prior.config)
    params, normalizer = convert_prior_state_dict(prior.state_dict(), model)
    return prior, model, params, normalizer


def _inputs(prior: PriorTransformer, seed: int):
    rng = np.random.default_rng(seed)
    config = prior.config
    length, dim = config.num_embeddings, config.embedding_dim
    proj_dim = config.embedding_proj_dim or dim
    x_t = rng.standard_normal((BATCH, dim)).astype(np.float32)
    text_embed = rng.standard_normal((BATCH, proj_dim)).astype(np.float32)
    tokens = rng.standard_normal((BATCH, length, dim)).astype(np.float32)
    timesteps = np.array([0, 17, 999])
    lengths = np.array([length, 2, 1])  # the first caption fills the context, the others pad
    mask = np.arange(length)[None] < lengths[:, None]
    return x_t, timesteps, text_embed, tokens, mask


@pytest.mark.parametrize("mask_kind", ["padded", "full", "none"])
def test_matches_diffusers_prior_transformer(converted, mask_kind):
    """ "none": diffusers without an attention mask drops the causal mask too (causal=False)."""
    prior, model, params, _ = converted
    x_t, timesteps, text_embed, tokens, mask = _inputs(prior, seed=1)
    mask = {"padded": mask, "full": np.ones_like(mask), "none": None}[mask_kind]
    if mask_kind == "none":
        model = model.clone(causal=False)
    with torch.no_grad():
        want = prior(
            torch.from_numpy(x_t),
            torch.from_numpy(timesteps),
            proj_embedding=torch.from_numpy(text_embed),
            encoder_hidden_states=torch.from_numpy(tokens),
            attention_mask=None if mask is None else torch.from_numpy(mask),
        ).predicted_image_embedding.numpy()
    got = jax.jit(model.apply)({"params": params}, x_t, timesteps, text_embed, tokens, mask)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)
    assert np.abs(want).mean() > 0.1  # a non-trivial output


def test_mean_std_normalizer_matches_post_process_latents(converted):
    prior, _, _, normalizer = converted
    x = np.random.default_rng(2).standard_normal((BATCH, prior.config.embedding_dim))
    x = x.astype(np.float32)
    with torch.no_grad():
        want = prior.post_process_latents(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(normalizer.denormalize(x)), want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(normalizer.normalize(want)), x, atol=1e-4, rtol=1e-4)


def test_converter_names_tensor_and_shapes(converted):
    prior, model, _, _ = converted
    state = dict(prior.state_dict())
    state["proj_in.weight"] = state["proj_in.weight"][:, :-1]
    with pytest.raises(ValueError, match=r"proj_in\.weight of shape .* x_proj/kernel .*expected"):
        convert_prior_state_dict(state, model)
    state = dict(prior.state_dict())
    del state["norm_out.bias"]
    with pytest.raises(ValueError, match=r"norm_out\.bias is missing"):
        convert_prior_state_dict(state, model)
