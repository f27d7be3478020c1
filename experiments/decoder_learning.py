"""Learning evidence for the decoder and the 16→64 upsampler on the large-object shapes (issue 7).

Stages, each writing `experiments/results/decoder_learning_<stage>.json` and printing its figures:

- `upsampler`: trains `configs/upsampler_demo.py`, then upsamples the clean 16 px downsamples of
  held-out images: oracle agreement with the objects of the low-res input, edge energy against
  the ground truth and bicubic's, MSE of both to the ground truth.
- `decoder`: trains `configs/decoder_demo.py` conditioned on a frozen CLIP's image embeddings,
  with EMA snapshots along the way; prints accuracy (oracle at 16 px, held-out cases) against
  training minutes.
- `gate`: the final decoder sampled from TRUE CLIP image embeddings of 256 held-out images, then
  the upsampler to 64 px; the oracle judges colour and colour+shape against the source.

    python -m experiments.decoder_learning --stage=upsampler --workdir=/tmp/decoder_learning \
        --data_dir=/tmp/tfds
    python -m experiments.decoder_learning --stage=decoder --clip_dir=/tmp/clip/clip ...
    python -m experiments.decoder_learning --stage=gate --clip_dir=/tmp/clip/clip ...

Wall-clock figures are printed with the machine's load average (`os.getloadavg`).
"""

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
from absl import app, flags
from flax import serialization

from unclip_jax.data import preprocess, shapes_captions
from unclip_jax.evals import shapes_oracle
from unclip_jax.models.decoder_sampling import DecoderSampler
from unclip_jax.nn.resize import bicubic_resize
from unclip_jax.train import decoder_task, upsampler_task
from unclip_jax.train import images as images_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"

flags.DEFINE_enum("stage", "decoder", ["upsampler", "decoder", "gate"], "What to run.")
flags.DEFINE_string("workdir", "/tmp/decoder_learning", "Runs and exported parameters.")
flags.DEFINE_string("results_dir", str(RESULTS), "Where the JSON results and figures go.")
flags.DEFINE_string("data_dir", None, "TFDS directory of the shapes set (built if missing).")
flags.DEFINE_string("clip_dir", "", "The CLIP checkpoint (the CLIP task's <workdir>/clip).")
flags.DEFINE_integer("steps", 0, "Training steps (0: the demo config's).")
flags.DEFINE_float("minutes", 0.0, "Stop training after this many minutes (0: no limit).")
flags.DEFINE_integer("snapshot_every", 250, "Decoder EMA snapshots for the learning curve.")
flags.DEFINE_integer("curve_cases", 64, "Held-out cases per learning-curve point.")
flags.DEFINE_integer("gate_cases", 256, "Held-out cases of the final gates.")
flags.DEFINE_float("guidance_scale", 0.0, "Decoder guidance scale (0: the config's).")
flags.DEFINE_integer("decoder_steps", 0, "Decoder sampling steps (0: the config's).")
flags.DEFINE_integer("upsampler_steps", 0, "Upsampler sampling steps (0: the config's).")
flags.DEFINE_string("prediction", "", "Override the decoder's parameterisation (eps, x0, v).")
flags.DEFINE_string("upsampler_prediction", "", "Override the upsampler's (eps, x0, v).")
flags.DEFINE_string("tag", "", "Suffix of the results' file names.")
FLAGS = flags.FLAGS


def load_config(name: str, arg: str | None = None):
    return importlib.import_module(f"configs.{name}").get_config(arg)


def load() -> str:
    return "load {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


def held_out(count: int) -> tuple[np.ndarray, list]:
    """(images [N, 64, 64, 3] in [-1, 1], scenes) of the first `count` test examples."""
    source = shapes_captions.build("large_64px", data_dir=FLAGS.data_dir).as_data_source("test")
    examples = [source[i] for i in range(count)]
    images = np.stack([preprocess.to_unit_range(np.asarray(e["image"])) for e in examples])
    return images, [shapes_captions.scene_of(e) for e in examples]


def oracle_scores(images: np.ndarray, scenes: list) -> dict[str, float]:
    """Fractions of images read as exactly one object of the source's colour (and shape)."""
    colour = both = 0
    for image, scene in zip(images, scenes, strict=True):
        read = shapes_oracle.read_objects(np.asarray(image))
        truth = scene.objects[0]
        colour += len(read) == 1 and read[0].colour == truth.colour
        both += shapes_oracle.reads_exactly(read, scene)
    return {"colour": colour / len(scenes), "colour_shape": both / len(scenes)}


def edge_energy(images: np.ndarray) -> float:
    """Mean squared finite-difference gradient over pixels and channels."""
    dy = np.diff(images, axis=1)
    dx = np.diff(images, axis=2)
    return float(np.mean(dy**2) + np.mean(dx**2))


def save_params(params, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(serialization.to_bytes(jax.device_get(nn.unbox(params))))


def restore_params(task, path: pathlib.Path, spec: dict):
    target = jax.eval_shape(lambda: nn.unbox(task.init(jax.random.key(0), spec)))
    return serialization.from_bytes(target, path.read_bytes())


def batched(fn, inputs: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate(
        [np.asarray(fn(inputs[i : i + size])) for i in range(0, len(inputs), size)]
    )


def write(stage: str, result: dict) -> None:
    results = pathlib.Path(FLAGS.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"decoder_learning_{stage}{FLAGS.tag}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


class BudgetSpent(Exception):
    """Raised by the training hook once the wall-clock budget is spent."""


def train(stage: str, config, runner, snapshot_every: int = 0):
    """Runs `runner(config, workdir, hooks)` until `config.train.total_steps` or `--minutes` of
    training; returns (final state, [(step, minutes, EMA params)], minutes)."""
    marks: dict[int, float] = {}
    snapshots = []
    last = {}

    def hook(step, state):
        marks[step] = time.perf_counter()
        minutes = (marks[step] - min(marks.values())) / 60
        last.update(step=step, state=state)
        spent = FLAGS.minutes and minutes >= FLAGS.minutes
        final = spent or step == config.train.total_steps
        if snapshot_every and (step % snapshot_every == 0 or final):
            snapshots.append((step, minutes, jax.device_get(nn.unbox(state.ema_params))))
        if spent and step < config.train.total_steps:
            raise BudgetSpent

    start_load = load()
    with contextlib.suppress(BudgetSpent):
        last["state"] = runner(config, FLAGS.workdir + f"/{stage}", [hook])
    step = int(jax.device_get(last["state"].step))
    times = sorted(marks.values())
    minutes = (times[-1] - times[0]) / 60 if len(times) > 1 else 0.0
    print(
        f"{stage}: step {step}, {len(times)} steps in this process in {minutes:.1f} min of "
        f"training (start {start_load}, end {load()})"
    )
    return last["state"], snapshots, minutes, step


def upsampler_stage() -> None:
    config = load_config("upsampler_demo")
    config.data.data_dir = FLAGS.data_dir
    if FLAGS.steps:
        config.train.total_steps = FLAGS.steps
    if FLAGS.upsampler_prediction:
        config.diffusion.prediction = FLAGS.upsampler_prediction
    builder = shapes_captions.build("large_64px", data_dir=FLAGS.data_dir)
    train_source, test_source = builder.as_data_source("train"), builder.as_data_source("test")
    runner = lambda c, w, hooks: upsampler_task.run(c, w, train_source, test_source, hooks)
    state, _, minutes, trained = train("upsampler", config, runner)
    params = nn.unbox(state.ema_params)
    save_params(params, pathlib.Path(FLAGS.workdir) / "upsampler_params.msgpack")

    task = upsampler_task.build_task(config)
    steps = FLAGS.upsampler_steps or config.diffusion.sample_steps
    images, scenes = held_out(FLAGS.gate_cases)
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
        result[name] = upsampler_figures(task, params, np.asarray(low), images, scenes, steps)
    result["load_at_end"] = load()
    write("upsampler", result)


def upsampler_figures(task, params, low, images, scenes, steps: int) -> dict:
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
        "oracle_truth_vs_source_scene_upsampled": oracle_scores(upsampled, scenes),
        "oracle_truth_vs_source_scene_low_res": oracle_scores(low, scenes),
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


def decoder_config():
    config = load_config("decoder_demo")
    config.clip_dir = FLAGS.clip_dir
    config.data.data_dir = FLAGS.data_dir
    if FLAGS.steps:
        config.train.total_steps = FLAGS.steps
    if FLAGS.prediction:
        config.diffusion.prediction = FLAGS.prediction
    if FLAGS.guidance_scale:
        config.guidance.scale = FLAGS.guidance_scale
    if FLAGS.decoder_steps:
        config.diffusion.sample_steps = FLAGS.decoder_steps
    return config


def sample_decoder(config, sampler: DecoderSampler, params, embeddings: np.ndarray) -> np.ndarray:
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


def decoder_stage() -> None:
    config = decoder_config()
    clip, _ = decoder_task.load_conditioning(config)
    builder = shapes_captions.build("large_64px", data_dir=FLAGS.data_dir)
    train_source, test_source = builder.as_data_source("train"), builder.as_data_source("test")
    runner = lambda c, w, hooks: decoder_task.run(
        c, w, train_source, test_source, clip, None, hooks
    )
    state, snapshots, minutes, trained = train("decoder", config, runner, FLAGS.snapshot_every)
    params = nn.unbox(state.ema_params)
    save_params(params, pathlib.Path(FLAGS.workdir) / "decoder_params.msgpack")

    sampler = decoder_task.build_task(config, clip).sampler
    images, scenes = held_out(FLAGS.curve_cases)
    embeddings = np.asarray(jax.jit(clip.image_embed)(jnp.asarray(images)))
    curve = []
    for step, at_minutes, snapshot in snapshots:
        samples = sample_decoder(config, sampler, snapshot, embeddings)
        scores = oracle_scores(samples, scenes)
        curve.append({"step": step, "minutes": round(at_minutes, 2), **scores})
        print(
            f"step {step:5d}  {at_minutes:5.1f} min  colour {scores['colour']:.3f}  "
            f"colour+shape {scores['colour_shape']:.3f}"
        )
    truth16 = oracle_scores(np.asarray(decoder_task.resize_images(jnp.asarray(images), 16)), scenes)
    result = {
        "train_steps": trained,
        "train_minutes": round(minutes, 2),
        "load_at_end": load(),
        "prediction": config.diffusion.prediction,
        "guidance_scale": config.guidance.scale,
        "sample_steps": config.diffusion.sample_steps,
        "curve_cases": len(scenes),
        "oracle_on_ground_truth_16px": truth16,
        "curve_oracle_16px": curve,
    }
    write("decoder", result)


def gate_stage() -> None:
    config = decoder_config()
    up_config = load_config("upsampler_demo")
    clip, _ = decoder_task.load_conditioning(config)
    spec = {"image": jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)}
    task = decoder_task.build_task(config, clip)
    params = restore_params(task, pathlib.Path(FLAGS.workdir) / "decoder_params.msgpack", spec)
    up_task = upsampler_task.build_task(up_config)
    up_params = restore_params(
        up_task, pathlib.Path(FLAGS.workdir) / "upsampler_params.msgpack", spec
    )
    images, scenes = held_out(FLAGS.gate_cases)
    embeddings = np.asarray(jax.jit(clip.image_embed)(jnp.asarray(images)))
    start = time.perf_counter()
    small = sample_decoder(config, task.sampler, params, embeddings)
    decoder_seconds = time.perf_counter() - start
    up_steps = FLAGS.upsampler_steps or up_config.diffusion.sample_steps
    key = jax.random.key(3)
    start = time.perf_counter()
    large = batched(
        lambda x: up_task.sampler(up_params, jnp.asarray(x), key, size=64, steps=up_steps),
        small,
        64,
    )
    upsampler_seconds = time.perf_counter() - start
    result = {
        "cases": len(scenes),
        "prediction": config.diffusion.prediction,
        "decoder_sampler": config.diffusion.sampler,
        "decoder_steps": config.diffusion.sample_steps,
        "guidance_scale": config.guidance.scale,
        "upsampler_prediction": up_config.diffusion.prediction,
        "upsampler_steps": up_steps,
        "decoder_sample_seconds": round(decoder_seconds, 1),
        "upsampler_sample_seconds": round(upsampler_seconds, 1),
        "load_at_end": load(),
        "oracle_64px_after_upsampler": oracle_scores(large, scenes),
        "oracle_16px_decoder_samples": oracle_scores(small, scenes),
    }
    write("gate", result)
    rows = np.concatenate([large[:8], images[:8]])  # samples above their sources
    images_lib.save_png(
        images_lib.image_grid(rows, 8),
        pathlib.Path(FLAGS.results_dir) / "decoder_learning_gate.png",
    )


def main(argv) -> None:
    del argv
    {"upsampler": upsampler_stage, "decoder": decoder_stage, "gate": gate_stage}[FLAGS.stage]()


if __name__ == "__main__":
    app.run(main)
