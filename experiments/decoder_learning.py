"""Learning evidence for the decoder and the 16→64 upsampler on the large-object shapes (issue 7).

Stages, each writing `experiments/results/decoder_learning/decoder_learning_<stage>.json`
(`--results_dir`) and printing its figures:

- `upsampler`: trains `configs/upsampler_demo.py`, then upsamples the clean 16 px downsamples of
  held-out images: oracle agreement with the objects of the low-res input, edge energy against
  the ground truth and bicubic's, MSE of both to the ground truth.
- `decoder`: trains `configs/decoder_demo.py` conditioned on a frozen CLIP's image embeddings,
  with EMA snapshots along the way; prints accuracy (oracle at 16 px, held-out cases) against
  training minutes.
- `gate`: the final decoder sampled from TRUE CLIP image embeddings of 256 held-out images, then
  the upsampler to 64 px; the oracle judges colour and colour+shape against the source
  (`evals.demo_metrics.single_object_accuracy`), and a grid of samples above their sources goes
  to `decoder_learning_gate.png`.

The EMA parameters of the trained stages are kept in `--workdir` as parameter checkpoints
(`storage.checkpoints.write_params`): `upsampler_params/`, `decoder_params/`.

    python -m experiments.decoder_learning --stage=upsampler --workdir=/tmp/decoder_learning \
        --data_dir=/tmp/tfds
    python -m experiments.decoder_learning --stage=decoder --clip_dir=/tmp/clip/clip ...
    python -m experiments.decoder_learning --stage=gate --clip_dir=/tmp/clip/clip ...

Wall-clock figures are printed with the machine's load average (`os.getloadavg`).
"""

import argparse
import contextlib
import importlib
import json
import os
import pathlib
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from unclip_jax.data import preprocess, shapes_captions
from unclip_jax.evals import shapes_oracle
from unclip_jax.evals.demo_metrics import single_object_accuracy
from unclip_jax.nn.resize import bicubic_resize
from unclip_jax.sampling.decoder import DecoderChain
from unclip_jax.storage.checkpoints import read_params, write_params
from unclip_jax.train import decoder_task, upsampler_task
from unclip_jax.train import images as images_lib

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "decoder_learning"

STAGES = ("upsampler", "decoder", "gate")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--stage", default="decoder", choices=STAGES, help="What to run.")
    add("--workdir", default="/tmp/decoder_learning", help="Runs and exported parameters.")
    add("--results_dir", default=str(RESULTS), help="Where the JSON results and figures go.")
    add("--data_dir", default=None, help="TFDS directory of the shapes set (built if missing).")
    add("--clip_dir", default="", help="The CLIP checkpoint (the CLIP task's <workdir>/clip).")
    add("--steps", type=int, default=0, help="Training steps (0: the demo config's).")
    add("--minutes", type=float, default=0.0, help="Training budget (0: no limit).")
    add("--snapshot_every", type=int, default=250, help="Decoder EMA snapshots for the curve.")
    add("--curve_cases", type=int, default=64, help="Held-out cases per learning-curve point.")
    add("--gate_cases", type=int, default=256, help="Held-out cases of the final gates.")
    add("--guidance_scale", type=float, default=0.0, help="Decoder guidance (0: the config's).")
    add("--decoder_steps", type=int, default=0, help="Decoder sampling steps (0: the config's).")
    add("--upsampler_steps", type=int, default=0, help="Upsampler steps (0: the config's).")
    add("--prediction", default="", help="Override the decoder's parameterisation (eps, x0, v).")
    add("--upsampler_prediction", default="", help="Override the upsampler's (eps, x0, v).")
    add("--tag", default="", help="Suffix of the results' file names.")
    return parser.parse_args()


def load_config(name: str, arg: str | None = None):
    return importlib.import_module(f"configs.{name}").get_config(arg)


def load() -> str:
    return "load {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


def held_out(args: argparse.Namespace, count: int) -> tuple[np.ndarray, list[str]]:
    """(images [N, 64, 64, 3] in [-1, 1], one caption each) of the first `count` test examples
    (one object each: any of an image's captions names it)."""
    source = shapes_captions.build("large_64px", data_dir=args.data_dir).as_data_source("test")
    examples = [source[i] for i in range(count)]
    images = np.stack([preprocess.to_unit_range(np.asarray(e["image"])) for e in examples])
    rng = np.random.default_rng(0)
    return images, [preprocess.choose_caption(e, rng) for e in examples]


def edge_energy(images: np.ndarray) -> float:
    """Mean squared finite-difference gradient over pixels and channels."""
    dy = np.diff(images, axis=1)
    dx = np.diff(images, axis=2)
    return float(np.mean(dy**2) + np.mean(dx**2))


def batched(fn, inputs: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate(
        [np.asarray(fn(inputs[i : i + size])) for i in range(0, len(inputs), size)]
    )


def write(args: argparse.Namespace, stage: str, result: dict) -> None:
    results = pathlib.Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"decoder_learning_{stage}{args.tag}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


class BudgetSpent(Exception):
    """Raised by the training hook once the wall-clock budget is spent."""


def train(args: argparse.Namespace, stage: str, config, runner, snapshot_every: int = 0):
    """Runs `runner(config, workdir, hooks)` until `config.train.total_steps` or `--minutes` of
    training; returns (final state, [(step, minutes, EMA params)], minutes)."""
    marks: dict[int, float] = {}
    snapshots = []
    last = {}

    def hook(step, state):
        marks[step] = time.perf_counter()
        minutes = (marks[step] - min(marks.values())) / 60
        last.update(step=step, state=state)
        spent = args.minutes and minutes >= args.minutes
        final = spent or step == config.train.total_steps
        if snapshot_every and (step % snapshot_every == 0 or final):
            snapshots.append((step, minutes, jax.device_get(nn.unbox(state.ema_params))))
        if spent and step < config.train.total_steps:
            raise BudgetSpent

    start_load = load()
    with contextlib.suppress(BudgetSpent):
        last["state"] = runner(config, args.workdir + f"/{stage}", [hook])
    step = int(jax.device_get(last["state"].step))
    times = sorted(marks.values())
    minutes = (times[-1] - times[0]) / 60 if len(times) > 1 else 0.0
    print(
        f"{stage}: step {step}, {len(times)} steps in this process in {minutes:.1f} min of "
        f"training (start {start_load}, end {load()})"
    )
    return last["state"], snapshots, minutes, step


def upsampler_stage(args: argparse.Namespace) -> None:
    config = load_config("upsampler_demo")
    config.data.data_dir = args.data_dir
    if args.steps:
        config.train.total_steps = args.steps
    if args.upsampler_prediction:
        config.diffusion.prediction = args.upsampler_prediction
    builder = shapes_captions.build("large_64px", data_dir=args.data_dir)
    train_source, test_source = builder.as_data_source("train"), builder.as_data_source("test")
    runner = lambda c, w, hooks: upsampler_task.run(c, w, train_source, test_source, hooks)
    state, _, minutes, trained = train(args, "upsampler", config, runner)
    params = nn.unbox(state.ema_params)
    write_params(pathlib.Path(args.workdir) / "upsampler_params", params)

    task = upsampler_task.build_task(config)
    steps = args.upsampler_steps or config.diffusion.sample_steps
    images, captions = held_out(args, args.gate_cases)
    # The clean antialiased downsample, and the training corruption (blur for this stage) that
    # the upsampler learned to invert.
    corrupt = upsampler_task.CORRUPTIONS[config.corruption]
    inputs = {
        "clean": decoder_task.resize_images(jnp.asarray(images), config.low_res),
        "training_corruption": corrupt(jax.random.key(2), jnp.asarray(images), config.low_res),
    }
    result = {
        "cases": len(images),
        "train_steps": trained,
        "train_minutes": round(minutes, 2),
        "prediction": config.diffusion.prediction,
        "corruption": config.corruption,
        "sample_steps": steps,
    }
    for name, low in inputs.items():
        result[name] = upsampler_figures(task, params, np.asarray(low), images, captions, steps)
    result["load_at_end"] = load()
    write(args, "upsampler", result)


def upsampler_figures(task, params, low, images, captions, steps: int) -> dict:
    """Oracle agreement with the low-res input, edge energy and MSE against the ground truth, of
    the upsampler and of bicubic upsampling, from low-res inputs [N, h, h, 3]."""
    size = images.shape[1]
    key = jax.random.key(1)
    start = time.perf_counter()
    upsampled = batched(
        lambda x: task.sampler(params, jnp.asarray(x), key, size=size, steps=steps), low, 64
    )
    sample_seconds = time.perf_counter() - start
    bicubic = np.clip(np.asarray(bicubic_resize(jnp.asarray(low), (size, size), True)), -1, 1)
    same = 0
    for image, small in zip(upsampled, low, strict=True):
        read_up = sorted((o.colour, o.shape) for o in shapes_oracle.read_objects(image))
        read_low = sorted((o.colour, o.shape) for o in shapes_oracle.read_objects(small))
        same += read_up == read_low
    truth = edge_energy(images)
    return {
        "sample_seconds": round(sample_seconds, 1),
        "oracle_same_as_low_res": same / len(images),
        "oracle_truth_vs_source_scene_upsampled": single_object_accuracy(upsampled, captions),
        "oracle_truth_vs_source_scene_low_res": single_object_accuracy(low, captions),
        "edge_energy": {
            "ground_truth": truth,
            "upsampler": edge_energy(upsampled),
            "bicubic": edge_energy(bicubic),
            "upsampler_relative": edge_energy(upsampled) / truth - 1,
            "bicubic_relative": edge_energy(bicubic) / truth - 1,
        },
        "mse_to_ground_truth": {
            "upsampler": float(np.mean((upsampled - images) ** 2)),
            "bicubic": float(np.mean((bicubic - images) ** 2)),
        },
    }


def decoder_config(args: argparse.Namespace):
    config = load_config("decoder_demo")
    config.clip_dir = args.clip_dir
    config.data.data_dir = args.data_dir
    if args.steps:
        config.train.total_steps = args.steps
    if args.prediction:
        config.diffusion.prediction = args.prediction
    if args.guidance_scale:
        config.guidance.scale = args.guidance_scale
    if args.decoder_steps:
        config.diffusion.sample_steps = args.decoder_steps
    return config


def sample_decoder(config, sampler: DecoderChain, params, embeddings: np.ndarray) -> np.ndarray:
    key = jax.random.key(2)

    def draw(z):
        return sampler(
            params,
            jnp.asarray(z),
            key,
            image_size=config.image_size,
            steps=config.diffusion.sample_steps,
            guidance_scale=config.guidance.scale,
        )

    return np.clip(batched(draw, embeddings, 64), -1, 1)


def decoder_stage(args: argparse.Namespace) -> None:
    config = decoder_config(args)
    clip, _ = decoder_task.load_conditioning(config)
    builder = shapes_captions.build("large_64px", data_dir=args.data_dir)
    train_source, test_source = builder.as_data_source("train"), builder.as_data_source("test")
    runner = lambda c, w, hooks: decoder_task.run(
        c, w, train_source, test_source, clip, None, hooks
    )
    state, snapshots, minutes, trained = train(args, "decoder", config, runner, args.snapshot_every)
    params = nn.unbox(state.ema_params)
    write_params(pathlib.Path(args.workdir) / "decoder_params", params)

    sampler = decoder_task.build_task(config, clip).sampler
    images, captions = held_out(args, args.curve_cases)
    embeddings = np.asarray(jax.jit(clip.image_embed)(jnp.asarray(images)))
    curve = []
    for step, at_minutes, snapshot in snapshots:
        samples = sample_decoder(config, sampler, snapshot, embeddings)
        scores = single_object_accuracy(samples, captions)
        curve.append({"step": step, "minutes": round(at_minutes, 2), **scores})
        print(
            f"step {step:5d}  {at_minutes:5.1f} min  colour {scores['colour']:.3f}  "
            f"colour+shape {scores['colour_shape']:.3f}"
        )
    truth16 = np.asarray(decoder_task.resize_images(jnp.asarray(images), 16))
    result = {
        "train_steps": trained,
        "train_minutes": round(minutes, 2),
        "load_at_end": load(),
        "prediction": config.diffusion.prediction,
        "guidance_scale": config.guidance.scale,
        "sample_steps": config.diffusion.sample_steps,
        "curve_cases": len(captions),
        "oracle_on_ground_truth_16px": single_object_accuracy(truth16, captions),
        "curve_oracle_16px": curve,
    }
    write(args, "decoder", result)


def gate_stage(args: argparse.Namespace) -> None:
    config = decoder_config(args)
    up_config = load_config("upsampler_demo")
    clip, _ = decoder_task.load_conditioning(config)
    task = decoder_task.build_task(config, clip)
    params = read_params(pathlib.Path(args.workdir) / "decoder_params")
    up_task = upsampler_task.build_task(up_config)
    up_params = read_params(pathlib.Path(args.workdir) / "upsampler_params")
    images, captions = held_out(args, args.gate_cases)
    embeddings = np.asarray(jax.jit(clip.image_embed)(jnp.asarray(images)))
    start = time.perf_counter()
    small = sample_decoder(config, task.sampler, params, embeddings)
    decoder_seconds = time.perf_counter() - start
    up_steps = args.upsampler_steps or up_config.diffusion.sample_steps
    key = jax.random.key(3)
    start = time.perf_counter()
    large = batched(
        lambda x: up_task.sampler(up_params, jnp.asarray(x), key, size=64, steps=up_steps),
        small,
        64,
    )
    upsampler_seconds = time.perf_counter() - start
    result = {
        "cases": len(captions),
        "prediction": config.diffusion.prediction,
        "decoder_sampler": config.diffusion.sampler,
        "decoder_steps": config.diffusion.sample_steps,
        "guidance_scale": config.guidance.scale,
        "upsampler_prediction": up_config.diffusion.prediction,
        "upsampler_steps": up_steps,
        "decoder_sample_seconds": round(decoder_seconds, 1),
        "upsampler_sample_seconds": round(upsampler_seconds, 1),
        "load_at_end": load(),
        "oracle_64px_after_upsampler": single_object_accuracy(large, captions),
        "oracle_16px_decoder_samples": single_object_accuracy(small, captions),
    }
    write(args, "gate", result)
    rows = np.concatenate([large[:8], images[:8]])  # samples above their sources
    images_lib.save_png(
        images_lib.image_grid(rows, 8),
        pathlib.Path(args.results_dir) / f"decoder_learning_gate{args.tag}.png",
    )


def main() -> None:
    args = parse()
    logging.set_verbosity(logging.INFO)  # the trainers' progress, as under absl's app.run
    stages = {"upsampler": upsampler_stage, "decoder": decoder_stage, "gate": gate_stage}
    stages[args.stage](args)


if __name__ == "__main__":
    main()
