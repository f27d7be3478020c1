"""One decoder attention layer's softmax attention, ours (`nn/softmax_attention.py`) against
`jax.nn.dot_product_attention` (what the layers called before) and PyTorch's
`scaled_dot_product_attention`, at the shapes of a decoder size's attention levels.

Queries are the level's H·W positions; keys and values add the conditioning tokens (4 image
tokens and the caption), masked as the decoder masks them. The forward alone (sampling) and the
forward with the gradients of queries, keys and values (training) are timed separately: each
time the mean of `--calls` calls in a row, the median of `--reps` rounds in which ours and
jax.nn's alternate, then of `--reps` rounds of PyTorch's (after any PyTorch call its OpenMP
threads spin on for a while, slowing the JAX call that follows), in one process. The JAX rows
split the batch over the local devices as the trainers and `UnCLIP` do (`JAX_NUM_CPU_DEVICES=2`:
one a core); PyTorch runs on all cores.
Writes `experiments/results/bench_attention/attention_<size><tag>.json`.

    JAX_NUM_CPU_DEVICES=2 .venv/bin/python -m experiments.bench_attention --sizes small
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench_common as common
from unclip_jax import sharding
from unclip_jax.nn.softmax_attention import dot_product_attention

IMAGE_TOKENS = 4  # the decoder's CLIP-embedding tokens (`num_image_tokens`)


def level_shapes(size: common.CascadeSize) -> list[tuple[int, int, int]]:
    """(resolution, heads, extra tokens) of each attention level, then of the middle block."""
    levels = [*size.decoder_attention, len(size.decoder_channels) - 1]
    extra = IMAGE_TOKENS + size.text_length
    return [
        (size.decoder_size // 2**level, size.decoder_channels[level] // size.head_dim, extra)
        for level in levels
    ]


def inputs(batch: int, resolution: int, heads: int, extra: int, head_dim: int) -> dict:
    """Queries [B, T, H, Dh], keys and values [B, T + E, H, Dh], the output's cotangent, and the
    key mask [B, 1, 1, T + E] (the caption's last quarter padding)."""
    rng = np.random.default_rng(0)
    queries, keys = resolution * resolution, resolution * resolution + extra
    kept = np.ones((batch, keys), bool)
    kept[:, extra - (extra - IMAGE_TOKENS) // 4 : extra] = False
    return dict(
        query=rng.standard_normal((batch, queries, heads, head_dim), np.float32),
        key=rng.standard_normal((batch, keys, heads, head_dim), np.float32),
        value=rng.standard_normal((batch, keys, heads, head_dim), np.float32),
        cotangent=rng.standard_normal((batch, queries, heads, head_dim), np.float32),
        mask=kept[:, None, None, :],
    )


def jax_calls(attention, arrays: dict) -> dict:
    """{"forward": fn(), "backward": fn()} of a JAX attention, the rows over the local devices."""
    devices = common.row_devices(len(arrays["query"]))
    mesh = sharding.make_mesh({"data": len(devices)}, devices)
    rows = sharding.batch_sharding(mesh)
    q, k, v, dy, mask = (
        jax.device_put(arrays[n], rows) for n in ("query", "key", "value", "cotangent", "mask")
    )

    def loss(q, k, v):
        return jnp.sum(attention(q, k, v, mask=mask) * dy)

    forward = jax.jit(lambda q, k, v: attention(q, k, v, mask=mask))
    backward = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return {
        "forward": lambda: forward(q, k, v).block_until_ready(),
        "backward": lambda: jax.block_until_ready(backward(q, k, v)),
    }


def torch_calls(arrays: dict) -> dict:
    """The same with `torch.nn.functional.scaled_dot_product_attention` ([B, H, T, Dh])."""
    import torch
    import torch.nn.functional as F

    q, k, v, dy = (
        torch.from_numpy(arrays[n]).permute(0, 2, 1, 3).contiguous().requires_grad_()
        for n in ("query", "key", "value", "cotangent")
    )
    mask = torch.from_numpy(arrays["mask"])

    def forward():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def backward():
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return torch.autograd.grad(out, (q, k, v), dy)

    return {"forward": forward, "backward": backward}


def bench_level(
    batch: int, resolution: int, heads: int, extra: int, head_dim: int, reps: int, calls: int
):
    arrays = inputs(batch, resolution, heads, extra, head_dim)
    sides = {
        "ours": jax_calls(dot_product_attention, arrays),
        "jax_nn": jax_calls(jax.nn.dot_product_attention, arrays),
        "torch": torch_calls(arrays),
    }
    times = {side: {part: [] for part in parts} for side, parts in sides.items()}
    for parts in sides.values():
        for call in parts.values():
            call()
    # PyTorch's rounds come after JAX's: its OpenMP threads spin on after each call, which
    # slowed whichever JAX call came next
    for group in (("ours", "jax_nn"), ("torch",)):
        for _ in range(reps):
            for side in group:
                for part, call in sides[side].items():
                    start = time.perf_counter()
                    for _ in range(calls):
                        call()
                    times[side][part].append((time.perf_counter() - start) / calls)
    medians = {
        side: {part: statistics.median(values) for part, values in parts.items()}
        for side, parts in times.items()
    }
    row = dict(
        resolution=resolution,
        heads=heads,
        head_dim=head_dim,
        queries=resolution * resolution,
        keys=resolution * resolution + extra,
        batch=batch,
        median_s=medians,
        speedup_over_jax_nn={p: medians["jax_nn"][p] / medians["ours"][p] for p in medians["ours"]},
        ratio_to_torch={p: medians["torch"][p] / medians["ours"][p] for p in medians["ours"]},
        times_s=times,
    )
    print(
        f"{resolution:3d} px {heads} heads  "
        + "  ".join(
            f"{part}: ours {1e3 * medians['ours'][part]:6.2f} ms, jax.nn "
            f"{1e3 * medians['jax_nn'][part]:6.2f} ({row['speedup_over_jax_nn'][part]:4.2f}×), "
            f"torch {1e3 * medians['torch'][part]:6.2f} ({row['ratio_to_torch'][part]:4.2f}×)"
            for part in ("forward", "backward")
        ),
        flush=True,
    )
    return row


def main() -> None:
    parser = common.argument_parser(__doc__, sizes="small", batch=8, reps=9, calls=10, tag="")
    args = parser.parse_args()
    sizes = common.split_names(parser, "--sizes", args.sizes, common.SIZES)
    if min(args.batch, args.reps, args.calls) < 1:
        parser.error(
            f"--batch, --reps and --calls must be >= 1, got {args.batch}, {args.reps}, {args.calls}"
        )
    info = common.machine()
    print(info, flush=True)
    for name in sizes:
        size = common.SIZES[name]
        load_before = common.load_average()
        rows = [
            bench_level(args.batch, *shape, size.head_dim, args.reps, args.calls)
            for shape in level_shapes(size)
        ]
        path = common.write_results(
            "bench_attention",
            f"attention_{name}{args.tag}",
            dict(
                machine=info,
                size=name,
                rows=rows,
                load_average=[load_before, common.load_average()],
            ),
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
