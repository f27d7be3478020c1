"""AdamW with warm-up and a decaying learning-rate schedule, gradient clipping and a weight-decay
mask that spares norms, biases and embeddings.

`make_optimizer(OptimizerConfig, decay_mask)` is what the train step applies; `decay_mask(boxed)`
reads the logical axis names of the parameters (from `sharding.py`) and their paths.
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from unclip_jax import sharding


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    peak_lr: float = 1e-4
    warmup_steps: int = 1000
    total_steps: int = 100_000  # where the decay ends
    schedule: str = "cosine"  # or "linear", "constant"
    end_lr_factor: float = 0.0  # final learning rate = peak_lr * end_lr_factor
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float = 1.0  # global-norm clipping; 0 disables

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"optimizer.schedule must be one of {sorted(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.peak_lr <= 0 or self.warmup_steps < 0:
            raise ValueError(
                f"optimizer needs peak_lr > 0 and warmup_steps >= 0, got {self.peak_lr}, "
                f"{self.warmup_steps}"
            )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "OptimizerConfig":
        """From `config.optimizer` (and `config.train.total_steps` for the decay length)."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"total_steps"}
        values = {name: config.optimizer[name] for name in fields}
        return cls(total_steps=int(config.train.total_steps), **values)


def _warmup(peak: float, warmup_steps: int) -> optax.Schedule:
    return optax.linear_schedule(0.0, peak, max(warmup_steps, 1))


def _cosine(c: OptimizerConfig) -> optax.Schedule:
    decay_steps = max(c.total_steps - c.warmup_steps, 1)
    return optax.cosine_decay_schedule(c.peak_lr, decay_steps, alpha=c.end_lr_factor)


def _linear(c: OptimizerConfig) -> optax.Schedule:
    decay_steps = max(c.total_steps - c.warmup_steps, 1)
    return optax.linear_schedule(c.peak_lr, c.peak_lr * c.end_lr_factor, decay_steps)


def _constant(c: OptimizerConfig) -> optax.Schedule:
    return optax.constant_schedule(c.peak_lr)


# Decay shapes after the linear warm-up.
SCHEDULES: dict[str, Callable[[OptimizerConfig], optax.Schedule]] = {
    "cosine": _cosine,
    "linear": _linear,
    "constant": _constant,
}


def learning_rate_schedule(c: OptimizerConfig) -> optax.Schedule:
    """Linear warm-up from 0 to `peak_lr` over `warmup_steps`, then the named decay."""
    return optax.join_schedules(
        [_warmup(c.peak_lr, c.warmup_steps), SCHEDULES[c.schedule](c)], [c.warmup_steps]
    )


# Logical axis names, and parameter-name fragments, of parameters that get no weight decay.
NO_DECAY_AXES = frozenset({sharding.NORM, sharding.VOCAB, sharding.LENGTH})
NO_DECAY_NAMES = ("bias", "scale", "norm", "embedding", "pos_emb")


def decay_mask(boxed_params: object) -> object:
    """True where weight decay applies: matrices and kernels, not norms, biases or embeddings.

    `boxed_params` are (abstract) parameters as `init` returns them, with logical names where
    present. The mask has the structure of the unboxed parameters.
    """

    def decays(path: tuple, leaf: object) -> bool:
        names = tuple(leaf.names) if isinstance(leaf, nn.Partitioned) else ()
        value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
        key = "/".join(str(getattr(p, "key", p)) for p in path).lower()
        return (
            len(value.shape) >= 2
            and not NO_DECAY_AXES.intersection(names)
            and not any(fragment in key for fragment in NO_DECAY_NAMES)
        )

    return jax.tree_util.tree_map_with_path(
        decays, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )


def make_optimizer(c: OptimizerConfig, mask: object) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW with the schedule; weight decay only where `mask` is True."""
    parts = [optax.clip_by_global_norm(c.grad_clip_norm)] if c.grad_clip_norm > 0 else []
    parts.append(
        optax.adamw(
            learning_rate_schedule(c),
            b1=c.b1,
            b2=c.b2,
            eps=c.eps,
            weight_decay=c.weight_decay,
            mask=mask,
        )
    )
    return optax.chain(*parts)


def global_norm(tree: object) -> jax.Array:
    """sqrt(sum of squares) over every leaf, in float32."""
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
