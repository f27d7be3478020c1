"""How well a trained demo dVAE keeps what the shapes oracle reads: held-out single-object images
of the DALL·E demo's data encoded to hard codes and decoded, the share the oracle reads in the
right colour and in the right colour and shape, and the perplexity of the codes in use.

Each workdir is an `unclip train --config=configs/dvae_shapes.py` run (its export `<workdir>/dvae`
and its record `<workdir>/run.json`, whose command gives the overrides); writes
`experiments/results/dvae_recon/<name>.json`, one row per workdir.

    unclip train --config=configs/dvae_shapes.py --workdir=/tmp/dvae_a --config.seed=1
    python -m experiments.dvae_recon /tmp/dvae_a /tmp/dvae_b --name=demo_dvae_trials
    python -m experiments.dvae_recon <study>/dvae --data_source=shapes_captions/32px \
        --name=study_dvae_trials
"""

import argparse
import json
import math
import pathlib

import jax
import numpy as np

from configs import demo_dalle
from experiments import bench_common
from unclip_jax.convert.dvae import load_dvae
from unclip_jax.demo.evaluate import held_out
from unclip_jax.evals import demo_metrics
from unclip_jax.models.dvae import FrozenDVAE
from unclip_jax.pipelines.images import to_uint8
from unclip_jax.train import dvae_task


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", help="Trained dvae_shapes workdirs.")
    parser.add_argument("--num", type=int, default=128, help="Held-out single-object images.")
    parser.add_argument("--name", default="dvae_recon", help="Results file name.")
    parser.add_argument(
        "--data_source",
        default="",
        help="TFDS source of the held-out images (default: the DALL·E demo's), e.g. "
        "shapes_captions/32px for the study's dVAE",
    )
    parser.add_argument("--data_dir", default="", help="TFDS data directory of --data_source.")
    return parser.parse_args()


def training_run(workdir: pathlib.Path) -> dict:
    """The `--config.*` flags of the workdir's last training run and the commit it ran at (the
    flags override that commit's configs/dvae_shapes.py)."""
    run = json.loads((workdir / "run.json").read_text())["runs"][-1]
    flags = [arg for arg in run["command"] if arg.startswith("--config.")]
    return {"overrides": flags, "commit": run["git"]["commit"], "dirty": run["git"]["dirty"]}


def reconstruction_figures(workdir: pathlib.Path, data: list[dict]) -> dict:
    config, variables = load_dvae(workdir / dvae_task.EXPORT_DIR)
    dvae = FrozenDVAE(config, variables["encoder"]["params"], variables["decoder"]["params"])
    images = np.stack([d["image"] for d in data]).astype(np.float32) / 127.5 - 1.0
    codes = np.asarray(jax.jit(FrozenDVAE.encode)(dvae, images))
    decoded = to_uint8(jax.jit(FrozenDVAE.decode)(dvae, codes))
    accuracy = demo_metrics.single_object_accuracy(decoded, [d["caption"] for d in data])
    usage = np.bincount(codes.ravel()) / codes.size
    usage = usage[usage > 0]
    return {
        "colour": accuracy["colour"],
        "colour_shape": accuracy["colour_shape"],
        "codebook_perplexity": math.exp(-float(np.sum(usage * np.log(usage)))),
        "codes_in_use": len(usage),
    }


def block_average_figures(data: list[dict], grids: tuple[int, ...] = (8, 16)) -> dict:
    """The oracle's reading of the held-out images drawn as grid × grid blocks of their average
    colour: what a dVAE whose codes hold only a patch's colour could reconstruct at that grid."""
    images = np.stack([d["image"] for d in data]).astype(np.float32)
    n, size = images.shape[:2]
    figures = {}
    for grid in grids:
        patch = size // grid
        blocks = images.reshape(n, grid, patch, grid, patch, 3).mean(axis=(2, 4))
        drawn = np.repeat(np.repeat(blocks, patch, axis=1), patch, axis=2)
        accuracy = demo_metrics.single_object_accuracy(
            drawn.round().astype(np.uint8), [d["caption"] for d in data]
        )
        figures[f"{grid}x{grid}"] = {
            "colour": accuracy["colour"],
            "colour_shape": accuracy["colour_shape"],
        }
    return figures


def main() -> None:
    args = parse()
    source = demo_dalle.get_config()
    if args.data_source:
        source.update(data_source=args.data_source, data_dir=args.data_dir)
    data = held_out(source, 2 * args.num)[: args.num]
    rows = {}
    for workdir in map(pathlib.Path, args.workdirs):
        rows[workdir.name] = training_run(workdir) | reconstruction_figures(workdir, data)
        print(workdir.name, json.dumps(rows[workdir.name]), flush=True)
    payload = {
        "images": len(data),
        "data_source": source.data_source,
        "runs": rows,
        "block_average": block_average_figures(data),
        "machine": bench_common.machine(),
    }
    print(bench_common.write_results("dvae_recon", args.name, payload))


if __name__ == "__main__":
    main()
