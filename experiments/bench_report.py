"""Markdown tables of the benchmark results in `experiments/results/` (for BENCHMARKS.md).

.venv/bin/python -m experiments.bench_report [--sampling sampling_cpu] [--train train_cpu]
"""

import argparse
import json

from experiments.bench_common import RESULTS

GIB = 2**30


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


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
    for path in sorted(RESULTS.glob("tpu_aot_*.json")):
        r = json.loads(path.read_text())
        mesh = ",".join(f"{k}={v}" for k, v in (r.get("mesh") or {}).items() if v != 1)
        if "error" in r:
            lines.append(
                f"| {r['stage']} | {r['target']} | train_step | {mesh or 'config'} | "
                f"{r.get('remat')} | | compile failed: {r['error'][:120]} | | no | | | |"
            )
            continue
        util = r["estimated_utilisation"]
        lines.append(
            f"| {r['stage']} | {r['target']} | {r['program']} | {mesh} | {r.get('remat', '-')} | "
            f"{r['params'] / 1e9:.2f}B | {r['bytes_per_chip'] / GIB:.1f} / "
            f"{r['hbm_bytes'] / GIB:.1f} GiB | {100 * r['headroom']:.0f}% | "
            f"{'yes' if r['fits_with_10pct_headroom'] else '**no**'} | "
            f"{r['estimated_step_s']:.3f} s | {'' if util is None else f'{100 * util:.0f}%'} | "
            f"{r['compile_s']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sampling", default="sampling_cpu", help="comma-separated result names")
    parser.add_argument("--train", default="train_cpu")
    args = parser.parse_args()
    runs = [data for name in args.sampling.split(",") if (data := _load(name))]
    if runs:
        print(f"### Sampling ({args.sampling})\n\n{sampling_table(runs)}\n")
    data = _load(args.train)
    if data:
        print(f"### Training ({args.train})\n\n{train_table(data)}\n")
    print(f"### TPU ahead-of-time compilation\n\n{aot_table()}\n")
    for name in ("cold_start_cpu", "xla_cpu_flags_small", "xla_cpu_flags_tiny"):
        data = _load(name)
        if data:
            shown = {k: v for k, v in data.items() if k != "machine"}
            print(f"### {name}\n\n```\n{json.dumps(shown, indent=1)}\n```\n")


if __name__ == "__main__":
    main()
