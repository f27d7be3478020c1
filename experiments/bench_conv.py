"""The U-Net's 3×3 convolutions on a CPU, forward, input gradient and weight gradient: XLA:CPU's
(the NHWC, same-padded `jax.lax.conv_general_dilated`), ours through oneDNN (`nn/conv.py`'s FFI
calls, where built) and PyTorch's (oneDNN, NCHW), at the shapes of a decoder size's levels.

A training step runs each convolution three times: forward, the gradient of its input and the
gradient of its kernel. The three are timed separately (median of `--reps` calls after a
warm-up, the implementations alternating, one process; with one JAX device, each on all cores;
with `JAX_NUM_CPU_DEVICES=n`, ours on cores / n threads), with the FLOP/s each
reaches (2 · B · H · W · 9 · C_in · C_out per product). XLA's flags apply to the whole process:
run it once per setting (`XLA_FLAGS=... --tag ...`) to compare them. Writes
`experiments/results/bench_conv/conv_<size><tag>.json`.

    .venv/bin/python -m experiments.bench_conv --sizes small --batch 8 --reps 5
"""

import statistics

import jax
import numpy as np

from experiments import bench_common as common
from unclip_jax.nn import conv as conv_lib

PARTS = ("forward", "input_grad", "kernel_grad")


def level_shapes(size: common.CascadeSize) -> list[tuple[int, int, int]]:
    """(resolution, C_in, C_out) of the decoder's 3×3 convolutions: within each level, and the
    first of each level after the first (its width changes)."""
    shapes, resolution, previous = [], size.decoder_size, size.decoder_channels[0]
    for channels in size.decoder_channels:
        if channels != previous:
            shapes.append((resolution, previous, channels))
        shapes.append((resolution, channels, channels))
        previous, resolution = channels, resolution // 2
    return shapes


def ours(conv, batch: int, resolution: int, c_in: int, c_out: int):
    """{part: fn()} of `conv`'s three products, each compiled once."""
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.normal(size=(batch, resolution, resolution, c_in)), np.float32)
    w = jax.numpy.asarray(rng.normal(size=(3, 3, c_in, c_out)) * 0.05, np.float32)
    dy = jax.numpy.asarray(rng.normal(size=(batch, resolution, resolution, c_out)), np.float32)
    forward = jax.jit(conv)
    input_grad = jax.jit(lambda w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
    kernel_grad = jax.jit(lambda x, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
    return {
        "forward": lambda: forward(x, w).block_until_ready(),
        "input_grad": lambda: input_grad(w, dy).block_until_ready(),
        "kernel_grad": lambda: kernel_grad(x, dy).block_until_ready(),
    }


def theirs(batch: int, resolution: int, c_in: int, c_out: int):
    """{part: fn()} of PyTorch's: the forward, and each gradient alone (the forward's graph kept
    and reused, so that only the gradient's own convolution runs)."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(batch, c_in, resolution, resolution, requires_grad=True)
    w = torch.randn(c_out, c_in, 3, 3, requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    dy = torch.randn_like(y)

    def grad(of):
        return lambda: torch.autograd.grad(y, [of], dy, retain_graph=True)

    def forward():
        with torch.no_grad():
            return F.conv2d(x, w, padding=1)

    return {"forward": forward, "input_grad": grad(x), "kernel_grad": grad(w)}


def bench(size_name: str, batch: int, reps: int) -> list[dict]:
    rows = []
    for resolution, c_in, c_out in level_shapes(common.SIZES[size_name]):
        flop = 2 * batch * resolution * resolution * 9 * c_in * c_out
        calls = {"xla": ours(conv_lib.xla_conv_same, batch, resolution, c_in, c_out)}
        if conv_lib.onednn_available():
            calls["onednn"] = ours(conv_lib.onednn_conv_same, batch, resolution, c_in, c_out)
        calls["torch"] = theirs(batch, resolution, c_in, c_out)
        for part in PARTS:
            times = {name: [] for name in calls}
            for name in times:
                calls[name][part]()  # warm-up (compilation, allocation)
            for _ in range(reps):
                for name in times:
                    times[name].append(common.seconds(calls[name][part]))
            median = {name: statistics.median(t) for name, t in times.items()}
            row = dict(
                size=size_name,
                batch=batch,
                resolution=resolution,
                c_in=c_in,
                c_out=c_out,
                part=part,
                **{f"{name}_ms": 1e3 * m for name, m in median.items()},
                **{f"{name}_gflops": flop / m / 1e9 for name, m in median.items()},
                seconds=times,
            )
            rows.append(row)
            print(
                f"{resolution:3d} px {c_in:4d} → {c_out:4d}  {part:11s}  "
                + "  ".join(f"{name} {row[name + '_ms']:7.2f} ms" for name in median)
                + "".join(
                    f"  {name}/xla {median['xla'] / median[name]:.2f}×"
                    for name in median
                    if name != "xla"
                ),
                flush=True,
            )
    return rows


def main() -> None:
    parser = common.argument_parser(__doc__, sizes="small", batch=8, reps=5, tag="")
    args = parser.parse_args()
    sizes = common.split_names(parser, "--sizes", args.sizes, common.SIZES)
    import torch

    rows = [row for name in sizes for row in bench(name, args.batch, args.reps)]
    machine = {**common.machine(), "torch_threads": torch.get_num_threads()}
    path = common.write_results(
        "bench_conv", f"conv_{'_'.join(sizes)}{args.tag}", dict(machine=machine, rows=rows)
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
