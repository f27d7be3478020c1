"""The demo's figures, from the assembled pipeline and the held-out shapes (`demo.py` runs it).

Gates of the pipeline issue, all read by the shapes oracle on fresh seeds:
- text → image: colour and colour+shape accuracy of single-object captions "a {colour} {shape}";
  binding accuracy of two-object captions (reported only: the demo data has one object);
- variations of held-out images keep the source's colour and shape, and differ from each other;
- interpolations between two held-out images of different colours read as A's colour at the
  first frame and B's at the last;
- text diffs "a red {shape}" → "a blue {shape}" of red held-out images read blue, same shape;
- CLIP score under the independently seeded CLIP, and layout diversity against the data.
"""

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import ml_collections
import numpy as np
from absl import logging

from unclip_jax.data import shapes_render
from unclip_jax.data.sources import open_source
from unclip_jax.evals import demo_metrics
from unclip_jax.evals.clip_score import CLIPScorer
from unclip_jax.pipelines.arguments import DecoderOptions, GenerateOptions
from unclip_jax.pipelines.images import captioned_grid
from unclip_jax.pipelines.unclip import UnCLIP
from unclip_jax.train.images import save_png

T = TypeVar("T")
DISTINCT = 8  # largest pixel difference above which two variations count as different


def single_captions(count: int) -> list[str]:
    """ "a {colour} {shape}" over every colour and shape, repeated to `count`."""
    pairs = itertools.cycle(itertools.product(shapes_render.COLOURS, shapes_render.SHAPES))
    return [
        f"a {colour} {shape}".replace("a o", "an o")
        for colour, shape in itertools.islice(pairs, count)
    ]


def pair_captions(count: int, rng: np.random.Generator) -> list[str]:
    out = []
    for _ in range(count):
        a, b = rng.choice(len(shapes_render.COLOURS), 2, replace=False)
        s, t = rng.choice(len(shapes_render.SHAPES), 2)
        out.append(
            f"a {shapes_render.COLOURS[a]} {shapes_render.SHAPES[s]} to the left of a "
            f"{shapes_render.COLOURS[b]} {shapes_render.SHAPES[t]}".replace("a o", "an o")
        )
    return out


def held_out(config: ml_collections.ConfigDict, count: int) -> list[dict]:
    """The first `count` single-object test examples: image, colour, shape, description."""
    source = open_source(config.data_source, "test", config.data_dir or None)
    out = []
    for i in range(min(count, len(source))):
        example = source[i]
        if int(example["num_objects"]) != 1:
            continue
        colour = shapes_render.COLOURS[int(example["object_colour"][0])]
        shape = shapes_render.SHAPES[int(example["object_shape"][0])]
        description = f"a {colour} {shape}".replace("a o", "an o")
        out.append(
            dict(
                image=np.asarray(example["image"]), colour=colour, shape=shape, caption=description
            )
        )
    return out


def _reads(image: np.ndarray, colour: str, shape: str | None = None) -> bool:
    read = demo_metrics.read_single(image)
    return read is not None and read.colour == colour and (shape is None or read.shape == shape)


def _timed(timings: dict[str, float], key: str, run: Callable[[], T]) -> T:
    """`run()`, its wall time recorded as `timings[key]`."""
    start = time.time()
    result = run()
    timings[key] = time.time() - start
    return result


def _options(s: ml_collections.ConfigDict, options: type) -> dict:
    """The settings of the `sampling` section that `options` (a TypedDict of `UnCLIP`'s
    keyword options) names."""
    return {name: s[name] for name in options.__annotations__}


def samples_grid(
    pipe: UnCLIP, config: ml_collections.ConfigDict, out: Path, generate: dict
) -> None:
    """`<out>/samples.png`: one captioned row of samples per grid prompt."""
    prompts = list(config.grid_prompts)
    n = config.grid_images_per_prompt
    grid = pipe.generate(prompts, n, seed=config.sampling.seed, **generate)
    out.mkdir(parents=True, exist_ok=True)
    save_png(
        captioned_grid(grid.reshape(len(prompts), n, *grid.shape[1:]), prompts), out / "samples.png"
    )


def oracle_accuracy(images: np.ndarray, captions: list[str]) -> dict:
    """Colour and colour+shape accuracy of single-object samples, read by the shapes oracle."""
    accuracy = demo_metrics.single_object_accuracy(images, captions)
    return {
        "oracle_colour": accuracy["colour"],
        "oracle_colour_shape": accuracy["colour_shape"],
    }


def mean_clip_score(scorer: CLIPScorer, images: np.ndarray, captions: list[str]) -> float:
    """Mean CLIP score of images against their captions."""
    return float(np.mean(scorer(images, captions)))


def layout_diversity(images: np.ndarray, captions: list[str], data: list[dict]) -> float | None:
    """Layout diversity of samples against the data (None where undefined)."""
    real = np.stack([d["image"] for d in data])
    # Size classes split at the data's median foreground fraction.
    background = shapes_render.BACKGROUND
    threshold = float(
        np.median(
            [
                np.mean(np.linalg.norm(d["image"].astype(np.float32) - background, axis=-1) > 70.0)
                for d in data
            ]
        )
    )
    diversity = demo_metrics.diversity(
        images, captions, real, [d["caption"] for d in data], threshold
    )
    return None if np.isnan(diversity) else diversity


def variation_figures(
    pipe: UnCLIP, sources: list[dict], per_source: int, seed: int, decode: dict
) -> dict:
    """Variations keep their source's colour and shape, and differ from each other."""
    variations = pipe.variations_batch(
        [d["image"] for d in sources], per_source, seed=seed, **decode
    )
    kept = distinct = 0
    for d, group in zip(sources, variations, strict=True):
        kept += sum(_reads(v, d["colour"], d["shape"]) for v in group)
        gaps = [
            np.abs(a.astype(int) - b.astype(int)).max() for a, b in itertools.combinations(group, 2)
        ]
        distinct += min(gaps) > DISTINCT
    return {
        "variations_keep_colour_shape": kept / variations[:, :, 0, 0, 0].size,
        "variations_all_distinct": distinct / len(sources),
    }


def interpolation_figures(
    pipe: UnCLIP, data: list[dict], count: int, frames: int, seed: int, decode: dict
) -> dict:
    """Interpolations between held-out images of different colours: A's colour, then B's."""
    pairs = [(a, b) for a, b in itertools.pairwise(data) if a["colour"] != b["colour"]]
    pairs = pairs[:count]
    paths = pipe.interpolate_batch(
        [a["image"] for a, _ in pairs],
        [b["image"] for _, b in pairs],
        frames,
        seed=seed,
        **decode,
    )
    good = sum(
        _reads(f[0], a["colour"]) and _reads(f[-1], b["colour"])
        for (a, b), f in zip(pairs, paths, strict=True)
    )
    return {"interpolation_endpoints": good / len(pairs)}


def text_diff_figures(
    pipe: UnCLIP, data: list[dict], count: int, thetas: list[float], seed: int, decode: dict
) -> dict:
    """Text diffs "a red {shape}" → "a blue {shape}" of red held-out images: blue, same shape."""
    reds = [d for d in data if d["colour"] == "red"][:count]
    edits = pipe.text_diff_batch(
        [d["image"] for d in reds],
        [f"a red {d['shape']}" for d in reds],
        [f"a blue {d['shape']}" for d in reds],
        thetas,
        seed=seed,
        **decode,
    )
    hits = np.mean(
        [[_reads(x, "blue", d["shape"]) for x in row] for d, row in zip(reds, edits, strict=True)],
        axis=0,
    )
    return {
        "text_diff_blue_same_shape": {
            f"{t:g}": float(r) for t, r in zip(thetas, hits, strict=True)
        },
        "text_diff_best": float(hits.max()),
    }


def evaluate(
    config: ml_collections.ConfigDict, pipeline_dir: Path, workdir: Path, out: Path
) -> dict:
    """Samples, scores and writes `<out>/samples.png`; returns the figures."""
    s, e = config.sampling, config.eval
    pipe = UnCLIP.load(pipeline_dir, progress=True)
    generate, decode = _options(s, GenerateOptions), _options(s, DecoderOptions)
    figures: dict = {"sampling": s.to_dict()}
    timings: dict[str, float] = {}

    _timed(timings, "grid", lambda: samples_grid(pipe, config, out, generate))
    captions = single_captions(e.num_single)
    images = _timed(
        timings, "single", lambda: pipe.generate(captions, 1, seed=s.seed + 1, **generate)
    )
    figures |= oracle_accuracy(images, captions)
    scorer = CLIPScorer(workdir / "score_clip" / "clip")
    figures["clip_score"] = mean_clip_score(scorer, images, captions)
    data = held_out(config, e.num_data_reference)
    real = np.stack([d["image"] for d in data])
    figures["clip_score_data"] = mean_clip_score(scorer, real, [d["caption"] for d in data])
    figures["diversity"] = layout_diversity(images, captions, data)

    pairs = pair_captions(e.num_binding, np.random.default_rng(s.seed))
    figures["binding"] = demo_metrics.binding_accuracy(
        pipe.generate(pairs, 1, seed=s.seed + 2, **generate), pairs
    )
    sources = data[: e.num_variation_sources]
    figures |= _timed(
        timings,
        "variations",
        lambda: variation_figures(pipe, sources, e.variations_per_source, s.seed + 3, decode),
    )
    figures |= _timed(
        timings,
        "interpolations",
        lambda: interpolation_figures(
            pipe, data, e.num_interpolations, e.interpolation_frames, s.seed + 4, decode
        ),
    )
    figures |= _timed(
        timings,
        "text_diffs",
        lambda: text_diff_figures(
            pipe, data, e.num_text_diffs, list(e.text_diff_thetas), s.seed + 5, decode
        ),
    )
    figures["sampling_seconds"] = {k: round(v, 1) for k, v in timings.items()}
    logging.info("demo figures: %s", json.dumps(figures))
    return figures
