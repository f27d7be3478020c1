"""XLA:CPU's own levers on the decoder U-Net call that dominates sampling: one guided call
(2 × batch rows) of the `small` decoder, timed in a fresh process per XLA_FLAGS setting (and with
the host split into one device per core, the rows data-parallel over them), next to diffusers'
decoder (PyTorch, oneDNN convolutions) on the same weights in this process.

    .venv/bin/python -m experiments.bench_xla_cpu_flags --size small --batch 4

Writes `experiments/results/bench_xla_cpu_flags/xla_cpu_flags_<tag or size>.json`.
"""

import json
import os
import statistics
import subprocess
import sys

import numpy as np

from experiments import bench_common as common

FLAG_SETS: dict[str, str] = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": (
        "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true"
    ),
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "vector_512": "--xla_cpu_prefer_vector_width=512",
    "no_thunk_runtime": "--xla_cpu_use_thunk_runtime=false",
    "single_thread_eigen": "--xla_cpu_multi_thread_eigen=false",
}
# Settings that also split the host into one device per core (`JAX_NUM_CPU_DEVICES`): the call's
# rows run data-parallel over the devices.
PER_CORE_DEVICES: dict[str, str] = {
    "per_core_devices": "",
    "per_core_devices_single_thread_eigen": "--xla_cpu_multi_thread_eigen=false",
}


def _median_call(fn, repeats: int) -> float:
    return statistics.median(common.warm_timings(fn, repeats))


def child(size_name: str, batch: int, repeats: int) -> None:
    """Prints the JSON {"seconds": ...} of one guided decoder call under this process's flags."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    size = common.SIZES[size_name]
    unet, text_proj = common.diffusers_decoder(size)
    model = common.our_decoder(size)
    params = common.decoder_params(size, model, unet, text_proj)
    mesh = Mesh(np.asarray(common.row_devices(2 * batch)), ("data",))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    rows = NamedSharding(mesh, PartitionSpec("data"))
    inputs = {k: jax.device_put(v, rows) for k, v in common.decoder_inputs(size, 2 * batch).items()}

    @jax.jit
    def call(params, inputs):
        return model.apply(
            {"params": params},
            inputs["x"],
            inputs["t"],
            inputs["image_embed"],
            caption_states=inputs["caption_states"],
            caption_embed=inputs["caption_embed"],
            caption_mask=inputs["caption_mask"],
        )

    seconds = _median_call(lambda: call(params, inputs).block_until_ready(), repeats)
    print(json.dumps({"seconds": seconds}))


def torch_call(size_name: str, batch: int, repeats: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    size = common.SIZES[size_name]
    unet, text_proj = common.diffusers_decoder(size)
    inputs = common.decoder_inputs(size, 2 * batch)
    with torch.no_grad():
        context, added = text_proj(
            image_embeddings=torch.from_numpy(inputs["image_embed"]),
            prompt_embeds=torch.from_numpy(inputs["caption_embed"]),
            text_encoder_hidden_states=torch.from_numpy(inputs["caption_states"]),
            do_classifier_free_guidance=False,
        )
    mask = F.pad(torch.from_numpy(inputs["caption_mask"]), (4, 0), value=True)
    x = torch.from_numpy(np.ascontiguousarray(inputs["x"].transpose(0, 3, 1, 2)))
    t = torch.from_numpy(inputs["t"])

    def call():
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=context, class_labels=added, attention_mask=mask)

    result = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        result[f"torch_{threads}_threads"] = _median_call(call, repeats)
    return result


def main() -> None:
    parser = common.argument_parser(__doc__, size="small", batch=4, repeats=5, tag=None)
    parser.add_argument("--sets", default=",".join([*FLAG_SETS, *PER_CORE_DEVICES]))
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    settings = {**FLAG_SETS, **PER_CORE_DEVICES}
    names = common.split_names(parser, "--sets", args.sets, settings)
    if args.child:
        child(args.size, args.batch, args.repeats)
        return
    info = common.machine()
    load_before = common.load_average()
    seconds = {}
    for name in names:
        env = {**os.environ, "XLA_FLAGS": settings[name]}
        env |= {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}
        if name in PER_CORE_DEVICES:
            env["JAX_NUM_CPU_DEVICES"] = str(os.cpu_count() or 1)
        command = [sys.executable, "-m", "experiments.bench_xla_cpu_flags", "--child"]
        command += [f"--size={args.size}", f"--batch={args.batch}", f"--repeats={args.repeats}"]
        run = subprocess.run(command, env=env, capture_output=True, text=True)
        if run.returncode:
            seconds[name] = None
            print(f"{name:20s} failed: {run.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        seconds[name] = json.loads(run.stdout.strip().splitlines()[-1])["seconds"]
        print(f"{name:20s} {1e3 * seconds[name]:8.1f} ms per guided call", flush=True)
    theirs = torch_call(args.size, args.batch, args.repeats)
    for name, value in theirs.items():
        print(f"{name:20s} {1e3 * value:8.1f} ms per guided call", flush=True)
    path = common.write_results(
        "bench_xla_cpu_flags",
        f"xla_cpu_flags_{args.tag or args.size}",
        dict(
            machine=info,
            size=args.size,
            batch=args.batch,
            flag_sets=FLAG_SETS,
            per_core_devices=PER_CORE_DEVICES,
            seconds={**seconds, **theirs},
            load_average=[load_before, common.load_average()],
        ),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
