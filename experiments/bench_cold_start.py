"""Cold starts of `unclip generate` with and without the persistent compilation cache.

Each run is a fresh process generating one image on a tiny random pipeline directory
(`tests/tiny_pipeline.py`). Runs: without the cache (twice), then with an empty cache directory
(the first cold start fills it) and again with the filled one (the second cold start). Prints the
wall times and the second cold start's speed-up over a start without the cache, and writes
`experiments/results/bench_cold_start/cold_start_<tag>.json`.

    .venv/bin/python -m experiments.bench_cold_start
"""

import pathlib
import statistics
import subprocess
import sys
import tempfile

from experiments import bench_common as common
from tests import tiny_pipeline


def generate(pipeline_dir: pathlib.Path, out: pathlib.Path, cache: str) -> float:
    """Wall seconds of one `unclip generate` process (import, load, compile, sample, write)."""
    command = [
        sys.executable,
        "-m",
        "unclip_jax.cli",
        "generate",
        "a red circle",
        f"--checkpoint={pipeline_dir}",
        f"--out={out}",
        "--num_images=1",
        f"--compilation_cache={cache}",
    ]
    return common.seconds(subprocess.run, command, check=True, capture_output=True)


def main() -> None:
    parser = common.argument_parser(__doc__, repeats=2, tag="cpu")
    args = parser.parse_args()
    info = common.machine()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        pipeline_dir = tiny_pipeline.build(tmp / "pipeline")
        times: dict[str, list[float]] = {"no_cache": [], "first_with_cache": [], "second": []}
        load_before = common.load_average()
        for repeat in range(args.repeats):
            cache = tmp / f"cache{repeat}"
            times["no_cache"].append(generate(pipeline_dir, tmp / f"a{repeat}", ""))
            times["first_with_cache"].append(generate(pipeline_dir, tmp / f"b{repeat}", str(cache)))
            times["second"].append(generate(pipeline_dir, tmp / f"c{repeat}", str(cache)))
            print({k: round(v[-1], 2) for k, v in times.items()}, flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    row = dict(
        times_s=times,
        median_s=medians,
        second_over_no_cache=medians["second"] / medians["no_cache"],
        load_average=[load_before, common.load_average()],
    )
    print(
        f"cold start without cache {medians['no_cache']:.1f} s, first with cache "
        f"{medians['first_with_cache']:.1f} s, second with cache {medians['second']:.1f} s "
        f"({100 * row['second_over_no_cache']:.0f}% of no cache)  load {row['load_average']}"
    )
    path = common.write_results(
        "bench_cold_start", f"cold_start_{args.tag}", dict(machine=info, **row)
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
