"""Markdown tables of the benchmark results in `experiments/results/<script>/` (for
BENCHMARKS.md); the defaults are the current CPU figures (BENCHMARKS.md, "One device per core").

.venv/bin/python -m experiments.bench_report [--sampling sampling_cpu_2dev,sampling_cpu_2dev_small]
    [--train train_cpu_2dev]
"""

import argparse
import json

from experiments.bench_common import results_dir

GIB = 2**30
# Result names (files under `results/<script>/`, without `.json`) the report reads by default.
SAMPLING = "sampling_cpu_2dev,sampling_cpu_2dev_small"  # bench_sampling
TRAIN = "train_cpu_2dev"  # bench_train
NOTES = (  # printed as JSON: (script, name)
    ("bench_cold_start", "cold_start_cpu_quiet"),
    ("bench_xla_cpu_flags", "xla_cpu_flags_small"),
    ("bench_xla_cpu_flags", "xla_cpu_flags_small_per_core"),
)


def _load(script: str, name: str) -> dict:
    path = results_dir(script) / f"{name}.json"
    if not path.exists():
        have = sorted(p.stem for p in results_dir(script).glob("*.json"))
        raise SystemExit(f"no result {name!r} in {results_dir(script)}; expected one of {have}")
    return json.loads(path.read_text())


def _machine(info: dict) -> str:
    return (
        f"{info['date']}, {info['cpu']} × {info['cores']} cores, backend {info['backend']}, "
        f"jax {info['jax']}, flax {info['flax']}, torch {info['torch']}, diffusers "
        f"{info['diffusers']}, XLA_FLAGS '{info['xla_flags']}', "
        f"{info.get('device_count', 1)} device(s)"
    )


def sampling_table(runs: list[dict]) -> str:
    lines = [f"Measured {_machine(data['machine'])}." for data in runs]
    lines += [
        "",
        "| size | batch | ours img/s (devices) | diffusers img/s (torch threads) | ratio | "
        "GFLOP/img (prior/decoder/SR) | ours GFLOP/s | diffusers GFLOP/s | "
        "load avg (before/after) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in [row for data in runs for row in data["rows"]]:
        f = r["flops_per_image"]
        lines.append(
            f"| {r['size']} | {r['batch']} | "
            f"{r['ours_images_per_s']:.3f} ({r.get('devices', 1)}) | "
            f"{r['diffusers_images_per_s']:.3f} ({r.get('torch_threads', '?')}) | "
            f"**{r['ratio']:.2f}×** | {f['total'] / 1e9:.2f} ({f['prior'] / 1e9:.2f}/"
            f"{f['decoder'] / 1e9:.2f}/{f['super_res'] / 1e9:.2f}) | "
            f"{r['ours_flops_per_s'] / 1e9:.1f} | {r['diffusers_flops_per_s'] / 1e9:.1f} | "
            f"{r['load_average'][0]:.1f} / {r['load_average'][1]:.1f} |"
        )
    return "\n".join(lines)


def train_table(data: dict) -> str:
    lines = [
        f"Measured {_machine(data['machine'])}.",
        "",
        "| size | batch | params | ours samples/s (devices) | PyTorch samples/s (threads) | "
        "ratio | GFLOP/step | ours util. | PyTorch util. | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['size']} | {r['batch']} | {r['params'] / 1e6:.1f}M | "
            f"{r['ours_samples_per_s']:.2f} ({r.get('devices', 1)}) | "
            f"{r['torch_samples_per_s']:.2f} "
            f"({r['torch_threads']}) | **{r['ratio']:.2f}×** | {r['flops_per_step'] / 1e9:.1f} | "
            f"{100 * r['ours_utilisation']:.1f}% | {100 * r['torch_utilisation']:.1f}% | "
            f"{r['load_average'][0]:.1f} / {r['load_average'][1]:.1f} |"
        )
    return "\n".join(lines)


def aot_table() -> str:
    lines = [
        "| stage | target | program | mesh | remat | params | per-chip memory / HBM | headroom "
        "| fits (≥10%) | est. step | est. utilisation | compile |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(results_dir("tpu_aot").glob("*.json")):
        r = json.loads(path.read_text())
        mesh = ",".join(f"{k}={v}" for k, v in (r.get("mesh") or {}).items() if v != 1)
        if "error" in r:  # a failed compile records the probe's settings, if any
            probe = r.get("probe") or {}
            shape = probe.get("mesh_shape") or {}
            mesh = mesh or ",".join(f"{k}={v}" for k, v in shape.items() if v != 1) or "config"
            accum = probe.get("accum") or r.get("grad_accum_steps") or 1
            program = "train_step" + (f", {accum} micro-batches" if accum > 1 else "")
            lines.append(
                f"| {r['stage']} | {r['target']} | {program} | {mesh} | "
                f"{r.get('remat') or probe.get('remat')} | | compile failed: {r['error'][:120]} "
                "| | no | | | |"
            )
            continue
        util, step = r.get("estimated_utilisation"), r.get("estimated_step_s")
        accum = r.get("grad_accum_steps", 1)
        program = r["program"] + (f", {accum} micro-batches" if accum > 1 else "")
        lines.append(
            f"| {r['stage']} | {r['target']} | {program} | {mesh} | {r.get('remat', '-')} | "
            f"{r['params'] / 1e9:.2f}B | {r['bytes_per_chip'] / GIB:.1f} / "
            f"{r['hbm_bytes'] / GIB:.1f} GiB | {100 * r['headroom']:.0f}% | "
            f"{'yes' if r['fits_with_10pct_headroom'] else '**no**'} | "
            f"{'–' if step is None else f'{step:.3f} s'} | "
            f"{'–' if util is None else f'{100 * util:.0f}%'} | "
            f"{r['compile_s']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sampling", default=SAMPLING, help="comma-separated result names of bench_sampling"
    )
    parser.add_argument("--train", default=TRAIN, help="a result name of bench_train")
    args = parser.parse_args()
    runs = [_load("bench_sampling", name) for name in args.sampling.split(",")]
    print(f"### Sampling ({args.sampling})\n\n{sampling_table(runs)}\n")
    print(f"### Training ({args.train})\n\n{train_table(_load('bench_train', args.train))}\n")
    print(f"### TPU ahead-of-time compilation\n\n{aot_table()}\n")
    for script, name in NOTES:
        shown = {k: v for k, v in _load(script, name).items() if k != "machine"}
        print(f"### {name}\n\n```\n{json.dumps(shown, indent=1)}\n```\n")


if __name__ == "__main__":
    main()
