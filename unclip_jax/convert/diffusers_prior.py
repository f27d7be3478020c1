"""diffusers `PriorTransformer` (Karlo's unCLIP prior) -> `DiffusionPrior` parameters.

    config = json.load(open("prior/config.json"))
    model = prior_from_diffusers_config(config)
    params, normalizer = convert_prior_state_dict(state_dict, model)

`state_dict` maps diffusers' tensor names to arrays (numpy or torch). The imported model takes the
empty caption's encoding as its null conditioning, as the diffusers pipeline does, and its
`clip_mean` / `clip_std` become a "mean_std" `EmbeddingNormalizer`.
"""

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from unclip_jax.models.prior import NUM_STEP_TOKENS, DiffusionPrior, EmbeddingNormalizer


def prior_from_diffusers_config(config: Mapping[str, Any], **overrides: Any) -> DiffusionPrior:
    """The `DiffusionPrior` with the layout of a diffusers `PriorTransformer` config."""
    supported = {
        "added_emb_type": "prd",
        "encoder_hid_proj_type": "linear",
        "time_embed_act_fn": "silu",
        "additional_embeddings": NUM_STEP_TOKENS + 1,
    }
    for key, expected in supported.items():
        if config.get(key, expected) != expected:
            raise ValueError(f"PriorTransformer {key} must be {expected!r}, got {config[key]!r}")
    for key in ("norm_in_type", "embedding_proj_norm_type"):
        if config.get(key) not in (None, "layer"):
            raise ValueError(f"PriorTransformer {key} must be None or 'layer', got {config[key]!r}")
    embedding_dim = config.get("embedding_dim", 768)
    clip_embed_dim = config.get("clip_embed_dim") or embedding_dim
    if clip_embed_dim != embedding_dim:
        raise ValueError(
            f"PriorTransformer clip_embed_dim must equal embedding_dim {embedding_dim}, "
            f"got {clip_embed_dim}"
        )
    heads = config.get("num_attention_heads", 32)
    head_dim = config.get("attention_head_dim", 64)
    fields = dict(
        embed_dim=embedding_dim,
        text_embed_dim=config.get("embedding_proj_dim") or embedding_dim,
        token_dim=embedding_dim,
        num_tokens=config.get("num_embeddings", 77),
        width=heads * head_dim,
        depth=config.get("num_layers", 20),
        num_heads=heads,
        head_dim=head_dim,
        mlp_ratio=4,
        time_embed_dim=config.get("time_embed_dim") or heads * head_dim,
        norm_in=config.get("norm_in_type") == "layer",
        text_embed_norm=config.get("embedding_proj_norm_type") == "layer",
        null_conditioning="empty_caption",
    )
    fields.update(overrides)
    return DiffusionPrior(**fields)


def _linear(w):  # torch Linear weight [out, in] -> Dense kernel [in, out]
    return w.T


def _unchanged(w):
    return w


def _squeeze(w):  # [1, ..., W] -> [..., W]
    return w.reshape(w.shape[1:]) if w.ndim > 1 else w


def _rules(model: DiffusionPrior) -> list[tuple[str, str, Callable]]:
    """(diffusers name, our parameter path, transform) for every tensor."""
    width, heads = model.width, model.num_heads
    head_dim = model.head_dim or width // heads

    def qkv_kernel(w):  # [H*Dh, W] -> [W, H, Dh]
        return w.T.reshape(width, heads, head_dim)

    def qkv_bias(b):
        return b.reshape(heads, head_dim)

    def out_kernel(w):  # [W, H*Dh] -> [H, Dh, W]
        return w.T.reshape(heads, head_dim, width)

    rules = []

    def linear(src, dst, kernel=_linear, bias=_unchanged):
        rules.extend(
            [(f"{src}.weight", f"{dst}/kernel", kernel), (f"{src}.bias", f"{dst}/bias", bias)]
        )

    def norm(src, dst):
        rules.extend(
            [
                (f"{src}.weight", f"{dst}/scale", _unchanged),
                (f"{src}.bias", f"{dst}/bias", _unchanged),
            ]
        )

    linear("time_embedding.linear_1", "time_in")
    linear("time_embedding.linear_2", "time_out")
    linear("proj_in", "x_proj")
    linear("embedding_proj", "text_proj")
    linear("encoder_hidden_states_proj", "tokens_proj")
    if model.text_embed_norm:
        norm("embedding_proj_norm", "text_norm")
    if model.norm_in:
        norm("norm_in", "norm_in")
    rules.append(("positional_embedding", "positions", _squeeze))
    rules.append(("prd_embedding", "query", lambda w: w.reshape(-1)))
    for i in range(model.depth):
        src, dst = f"transformer_blocks.{i}", f"block_{i}"
        norm(f"{src}.norm1", f"{dst}/norm_attn")
        for ours, theirs in (("query", "to_q"), ("key", "to_k"), ("value", "to_v")):
            linear(f"{src}.attn1.{theirs}", f"{dst}/attn/{ours}", qkv_kernel, qkv_bias)
        linear(f"{src}.attn1.to_out.0", f"{dst}/attn/out", out_kernel)
        norm(f"{src}.norm3", f"{dst}/norm_mlp")
        linear(f"{src}.ff.net.0.proj", f"{dst}/mlp_in")
        linear(f"{src}.ff.net.2", f"{dst}/mlp_out")
    norm("norm_out", "norm_out")
    linear("proj_to_clip_embeddings", "out_proj")
    return rules


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, np.float32)


def convert_prior_state_dict(
    state_dict: Mapping[str, Any], model: DiffusionPrior
) -> tuple[dict, EmbeddingNormalizer]:
    """Parameters of `model` from a `PriorTransformer` state dict, and its mean/std normaliser.

    Raises ValueError naming the tensor when one is missing, unexpected, or of the wrong shape.
    """
    expected = jax.eval_shape(
        lambda: model.init(
            jax.random.PRNGKey(0),
            jnp.zeros((1, model.embed_dim)),
            jnp.zeros((1,)),
            jnp.zeros((1, model.text_embed_dim or model.embed_dim)),
            jnp.zeros((1, model.num_tokens, model.token_dim or model.embed_dim)),
        )
    )
    expected = traverse_util.flatten_dict(nn.meta.unbox(expected["params"]), sep="/")
    state = {name: _to_numpy(value) for name, value in state_dict.items()}
    rules = _rules(model)
    used = {src for src, _, _ in rules} | {"clip_mean", "clip_std"}
    unexpected = sorted(set(state) - used)
    if unexpected:
        raise ValueError(f"unexpected PriorTransformer tensors: {unexpected}")
    params = {}
    for src, dst, transform in rules:
        if src not in state:
            raise ValueError(f"PriorTransformer tensor {src} is missing (needed for {dst})")
        if dst not in expected:
            raise ValueError(f"PriorTransformer tensor {src} maps to {dst}, which the model lacks")
        try:
            value = transform(state[src])
        except ValueError as err:
            raise ValueError(
                f"PriorTransformer tensor {src} of shape {state[src].shape} cannot become {dst} "
                f"of shape {tuple(expected[dst].shape)}"
            ) from err
        if value.shape != tuple(expected[dst].shape):
            raise ValueError(
                f"PriorTransformer tensor {src} of shape {state[src].shape} gives {dst} of shape "
                f"{value.shape}, expected {tuple(expected[dst].shape)}"
            )
        params[dst] = jnp.asarray(value, expected[dst].dtype)
    learned_only = sorted(set(expected) - set(params))
    if learned_only:
        raise ValueError(f"model parameters with no PriorTransformer tensor: {learned_only}")
    normalizer = EmbeddingNormalizer.create(
        "mean_std",
        model.embed_dim,
        mean=_squeeze(state["clip_mean"]) if "clip_mean" in state else None,
        std=_squeeze(state["clip_std"]) if "clip_std" in state else None,
    )
    return traverse_util.unflatten_dict(params, sep="/"), normalizer
