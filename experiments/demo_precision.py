"""The demo pipeline sampled in float32 and in bfloat16 (`UnCLIP.load(dtype=)`): the demo's
single-object text → image figure (its captions, seed and sampling settings) read by the shapes
oracle in each precision, with the wall time of each (after a first call that compiles).

Writes `experiments/results/demo_precision/<name>.json` and prints the figures.

    make demo   # trains workdirs/demo/pipeline
    python -m experiments.demo_precision --pipeline=workdirs/demo/pipeline
"""

import argparse
import os
import pathlib
import time

import numpy as np

from configs import demo as demo_config
from experiments import bench_common
from unclip_jax.demo.evaluate import options as settings_of
from unclip_jax.demo.evaluate import oracle_accuracy, single_captions
from unclip_jax.pipelines.arguments import GenerateOptions
from unclip_jax.pipelines.unclip import UnCLIP

DTYPES = ("float32", "bfloat16")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default="workdirs/demo/pipeline", help="The demo's export.")
    parser.add_argument("--num", type=int, default=0, help="Captions (0: the demo's count).")
    parser.add_argument("--name", default="demo_precision", help="Results file name.")
    return parser.parse_args()


def sample(pipeline: pathlib.Path, dtype: str, captions: list[str], seed: int, options: dict):
    """(uint8 images [N, S, S, 3], seconds of the timed call) in `dtype`; a first call on two
    captions compiles the programs the timed one reuses (its batch is bucketed alike)."""
    pipe = UnCLIP.load(pipeline, dtype=dtype, progress=True)
    pipe.generate(captions[:2], 1, seed=seed, **options)
    start = time.perf_counter()
    images = pipe.generate(captions, 1, seed=seed, **options)
    return images, time.perf_counter() - start


def main() -> None:
    args = parse()
    config = demo_config.get_config()
    s = config.sampling
    captions = single_captions(args.num or config.eval.num_single)
    options = settings_of(s, GenerateOptions)
    rows, drawn = {}, {}
    for dtype in DTYPES:
        images, seconds = sample(pathlib.Path(args.pipeline), dtype, captions, s.seed + 1, options)
        drawn[dtype] = images.astype(np.float32)
        rows[dtype] = oracle_accuracy(images, captions) | {"seconds": round(seconds, 1)}
        print(dtype, rows[dtype], flush=True)
    shape_accuracy = {dtype: rows[dtype]["oracle_colour_shape"] for dtype in DTYPES}
    difference = np.abs(drawn["bfloat16"] - drawn["float32"]) / 255.0
    payload = {
        "captions": len(captions),
        "seed": s.seed + 1,
        "sampling": options,
        "by_dtype": rows,
        "colour_shape_points": round(
            100 * (shape_accuracy["bfloat16"] - shape_accuracy["float32"]), 1
        ),
        "mean_abs_pixel_difference": float(difference.mean()),
        "load_average": os.getloadavg(),
        "machine": bench_common.machine(),
    }
    print(bench_common.write_results("demo_precision", args.name, payload))


if __name__ == "__main__":
    main()
