"""Where a decoder train step's time goes, ours against PyTorch's: the steps of `bench_train`
(ours data-parallel over the local devices, PyTorch on all cores) profiled for a few steps after
a warm-up — ours with `jax.profiler` (the device threads' operations, their kind being the XLA
name without its number: `ynn_fusion` is a product or convolution YNNPACK runs, `copy` and
`transpose_copy_fusion` move data between layouts), PyTorch's with `torch.profiler` (each aten
operator's own time). Prints each side's top kinds with their share of that side's operation
time, and writes `experiments/results/profile_train/profile_<size><tag>.json`.

    JAX_NUM_CPU_DEVICES=2 .venv/bin/python -m experiments.profile_train --sizes small --steps 3

Shares, not absolute times, are the figures to read: the profilers add their own cost, and the
device threads' times add up over the devices.
"""

import collections
import gzip
import json
import re
import tempfile
from pathlib import Path

import jax

from experiments import bench_common as common
from experiments.bench_train import OurStep, TorchStep, batch_of

# host-side spans of the trace, not operations
HOST_SPANS = ("ThunkExecutor", "$", "PjitFunction", "CommonPjRt", "Wait for Launch")


def shares(times: collections.Counter, counts: collections.Counter, steps: int, top: int):
    """The `top` kinds by time: [{kind, ms_per_step, share, calls_per_step}]."""
    total = sum(times.values())
    return [
        dict(
            kind=kind,
            ms_per_step=micros / steps / 1e3,
            share=micros / total,
            calls_per_step=counts[kind] / steps,
        )
        for kind, micros in times.most_common(top)
    ]


# a kernel gradient is a convolution whose window is the image (the input's size), not the kernel's
WINDOW = re.compile(r"window=\{size=(\d+)x(\d+)")
PROJECTIONS = re.compile(r"/(query|key|value|extra_key|extra_value|out)/")


def compiled_roles(hlo: str) -> dict[str, str]:
    """{operation name: its role}, read from the compiled step's HLO: the convolutions (forward,
    input gradient, kernel gradient), attention's projections, its products and the rest of it
    (softmax, masks, layout), other products. Operations not named here keep their kind."""
    lines = {}
    for line in hlo.splitlines():
        match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
        if match:
            lines.setdefault(match.group(1), line)
    bodies = {
        match.group(1): match.group(2)
        for match in re.finditer(r"\n%([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S)
    }
    roles = {}
    for name, line in lines.items():
        if re.search(r" (all-reduce|all-gather|reduce-scatter|collective-permute)", line):
            continue  # a collective's name lists every layer it carries
        called = re.search(r"calls=%([\w.\-]+)", line)
        body = line + (bodies.get(called.group(1), "") if called else "")
        attention = re.search(r"[/(]attention[/)]", body) is not None
        if "convolution(" in body:
            window = WINDOW.search(body)
            if window and min(int(window[1]), int(window[2])) > 7:
                roles[name] = "convolution: kernel gradient"
            elif "transpose(jvp" in body:
                roles[name] = "convolution: input gradient"
            else:
                roles[name] = "convolution: forward"
        elif " dot(" in body and attention:
            projection = PROJECTIONS.search(body)
            roles[name] = "attention: projections" if projection else "attention: products"
        elif " dot(" in body:
            roles[name] = "other products"
        elif attention:
            roles[name] = "attention: softmax, masks, layout"
    return roles


def profile_ours(step: OurStep, steps: int, top: int) -> tuple[list[dict], list[dict]]:
    """The top operation kinds and the top roles (`compiled_roles`) of the step's time."""
    roles = compiled_roles(step.step.lower(step.state, step.batch, step.key).compile().as_text())
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        for _ in range(steps):
            step()
        jax.profiler.stop_trace()
        (trace,) = Path(folder).glob("**/*.trace.json.gz")
        with gzip.open(trace) as file:
            events = json.load(file)["traceEvents"]
    times, counts = collections.Counter(), collections.Counter()
    role_times, role_counts = collections.Counter(), collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") != "X" or name.startswith(HOST_SPANS):
            continue
        kind = re.sub(r"[.\d]+$", "", name)
        role = roles.get(name, kind)
        times[kind] += event.get("dur", 0)
        counts[kind] += 1
        role_times[role] += event.get("dur", 0)
        role_counts[role] += 1
    return shares(times, counts, steps, top), shares(role_times, role_counts, steps, top)


def profile_torch(step: TorchStep, steps: int, top: int) -> list[dict]:
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
    times, counts = collections.Counter(), collections.Counter()
    for row in profiler.key_averages():
        times[row.key] += row.self_cpu_time_total
        counts[row.key] += row.count
    return shares(times, counts, steps, top)


def print_side(name: str, rows: list[dict]) -> None:
    print(f"{name}:")
    for row in rows:
        print(
            f"  {row['ms_per_step']:9.1f} ms/step  {100 * row['share']:5.1f}%  {row['kind']} "
            f"(× {row['calls_per_step']:.0f})",
            flush=True,
        )


def main() -> None:
    parser = common.argument_parser(__doc__, sizes="small", batch=8, steps=3, top=12, tag="")
    args = parser.parse_args()
    sizes = common.split_names(parser, "--sizes", args.sizes, common.SIZES)
    import torch

    for name in sizes:
        size = common.SIZES[name]
        batch = batch_of(size, args.batch)
        ours, theirs = OurStep(size, batch, "float32"), TorchStep(size, batch)
        common.pick_torch_threads(theirs, repeats=1)
        for _ in range(2):  # warm-up: compilation, allocation
            ours()
            theirs()
        row = dict(
            size=name,
            batch=args.batch,
            steps=args.steps,
            devices=ours.devices,
            torch_threads=torch.get_num_threads(),
            load_average=common.load_average(),
            torch=profile_torch(theirs, args.steps, args.top),
        )
        row["ours"], row["ours_roles"] = profile_ours(ours, args.steps, args.top)
        print(f"{name}, batch {args.batch}, load {row['load_average']}")
        print_side(f"ours ({ours.devices} devices)", row["ours"])
        print_side("ours by role", row["ours_roles"])
        print_side(f"PyTorch ({row['torch_threads']} threads)", row["torch"])
        path = common.write_results(
            "profile_train",
            f"profile_{name}{args.tag}",
            dict(machine={**common.machine(), "torch": torch.__version__}, rows=[row]),
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
