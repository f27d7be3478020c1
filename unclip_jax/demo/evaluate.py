"""The demo's figures, from the assembled pipeline and the held-out shapes (`demo.py` runs it).

Gates of the pipeline issue, all read by the shapes oracle on fresh seeds:
- text → image: colour and colour+shape accuracy of single-object captions "a {colour} {shape}";
  the same through the autoregressive prior (§2.1; reported beside them as `ar_prior_*`);
  binding accuracy of two-object captions (reported only: the demo data has one object);
- variations of held-out images (from their DDIM inversions, §3.1) keep the source's colour and
  shape, and differ from each other; reported beside them: keep-rate and spread per η and for
  fresh noise, and the unguided η = 0 reconstruction's MSE against a fresh-noise variation's;
- interpolations between two held-out images of different colours read as A's colour at the
  first frame and B's at the last; reported: the unguided end frames' MSE to A and B;
- text diffs "a red {shape}" → "a blue {shape}" of red held-out images read blue, same shape;
- CLIP score under the independently seeded CLIP, and layout diversity against the data.
"""

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import ml_collections
import numpy as np
from absl import logging

from unclip_jax.data import shapes_render
from unclip_jax.data.sources import open_source
from unclip_jax.evals import demo_metrics, diversity
from unclip_jax.evals.clip_score import CLIPScorer
from unclip_jax.pipelines.arguments import DecoderOptions, GenerateOptions
from unclip_jax.pipelines.image_operations import VARIATION_ETA
from unclip_jax.pipelines.images import as_image, captioned_grid, center_square, resize
from unclip_jax.pipelines.store import prior_kinds
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


def held_out(config: ml_collections.ConfigDict, count: int, split: str = "test") -> list[dict]:
    """The single-object examples among the first `count` of `split`: image, colour, shape,
    description."""
    source = open_source(config.data_source, split, config.data_dir or None)
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


def reads_as(image: np.ndarray, colour: str, shape: str | None = None) -> bool:
    """Whether the oracle reads exactly one object, of `colour` (and `shape` where given)."""
    read = demo_metrics.read_single(image)
    return read is not None and read.colour == colour and (shape is None or read.shape == shape)


def timed(timings: dict[str, float], key: str, run: Callable[[], T]) -> T:
    """`run()`, its wall time recorded as `timings[key]`."""
    start = time.time()
    result = run()
    timings[key] = time.time() - start
    return result


def options(s: ml_collections.ConfigDict, options: type) -> dict:
    """The settings of the `sampling` section that `options` (a TypedDict of `UnCLIP`'s
    keyword options) names."""
    return {name: s[name] for name in options.__annotations__}


class Generator(Protocol):
    """A text → image pipeline (`UnCLIP`, `Dalle`)."""

    def generate(
        self, prompts: list[str], num_images_per_prompt: int = 1, seed: int = 0, **options: Any
    ) -> np.ndarray:
        """uint8 [P·n, S, S, 3], prompt-major."""


def samples_grid(
    pipe: Generator,
    config: ml_collections.ConfigDict,
    out: Path,
    generate: dict,
    name: str = "samples.png",
) -> np.ndarray:
    """`<out>/<name>`: one captioned row of samples per grid prompt, drawn with the options
    `generate`; returns the samples, uint8 [P·n, S, S, 3] prompt-major."""
    prompts = list(config.grid_prompts)
    n = config.grid_images_per_prompt
    grid = pipe.generate(prompts, n, seed=config.sampling.seed, **generate)
    out.mkdir(parents=True, exist_ok=True)
    save_png(captioned_grid(grid.reshape(len(prompts), n, *grid.shape[1:]), prompts), out / name)
    return grid


def oracle_accuracy(images: np.ndarray, captions: list[str]) -> dict:
    """Colour and colour+shape accuracy of single-object samples, read by the shapes oracle."""
    accuracy = demo_metrics.single_object_accuracy(images, captions)
    return {
        "oracle_colour": accuracy["colour"],
        "oracle_colour_shape": accuracy["colour_shape"],
    }


def ar_prior_figures(pipeline_dir: Path, captions: list[str], seed: int, decode: dict) -> dict:
    """Oracle colour and colour+shape accuracy of `captions` sampled through the pipeline's
    autoregressive prior, with the decoder settings and seed of the diffusion prior's figures
    and the AR stage's own steps, guidance and candidates; {} where it holds no AR prior."""
    if "ar" not in prior_kinds(pipeline_dir):
        logging.info("%s holds no autoregressive prior: no ar_prior figures", pipeline_dir)
        return {}
    pipe = UnCLIP.load(pipeline_dir, prior="ar", progress=True)
    images = pipe.generate(captions, 1, seed=seed, **decode)
    settings = pipe.prior.settings
    return {f"ar_prior_{k}": v for k, v in oracle_accuracy(images, captions).items()} | {
        "ar_prior_sampling": {
            "guidance_scale": settings.guidance_scale,
            "candidates": settings.candidates,
            "dot_sampling": settings.dot_sampling,
            "codes": pipe.prior.model.num_codes,
        }
    }


def mean_clip_score(scorer: CLIPScorer, images: np.ndarray, captions: list[str]) -> float:
    """Mean CLIP score of images against their captions."""
    return float(np.mean(scorer(images, captions)))


def size_threshold(data: list[dict]) -> float:
    """The data's median foreground fraction: where the layouts' size classes split."""
    background = shapes_render.BACKGROUND
    return float(
        np.median(
            [
                np.mean(np.linalg.norm(d["image"].astype(np.float32) - background, axis=-1) > 70.0)
                for d in data
            ]
        )
    )


def layout_diversity(images: np.ndarray, captions: list[str], data: list[dict]) -> float | None:
    """Layout diversity of samples against the data (None where undefined)."""
    real = np.stack([d["image"] for d in data])
    diversity = demo_metrics.diversity(
        images, captions, real, [d["caption"] for d in data], size_threshold(data)
    )
    return None if np.isnan(diversity) else diversity


def _mse_to_sources(images: np.ndarray, sources: list[np.ndarray]) -> float:
    """Mean squared error in [0, 1] pixel units of images uint8 [N, S, S, 3] (the decoder's
    resolution) to their sources, centre-squared and resized to S as the pipeline does."""
    size = images.shape[1]
    target = np.stack([resize(center_square(as_image(s)), size) for s in sources])
    return float(np.mean(((images.astype(np.float64) - target) / 255.0) ** 2))


def _variation_reads(
    sources: list[dict], groups: np.ndarray, embed: Callable[[np.ndarray], np.ndarray]
) -> dict:
    """Oracle keep-rate of colour and shape, share of sources whose variations all differ, and
    spread (mean pairwise 1 − cos of `embed`'s embeddings, `evals.diversity`) of groups
    uint8 [G, K, S, S, 3]."""
    kept = distinct = 0
    for d, group in zip(sources, groups, strict=True):
        kept += sum(reads_as(v, d["colour"], d["shape"]) for v in group)
        gaps = [
            np.abs(a.astype(int) - b.astype(int)).max() for a, b in itertools.combinations(group, 2)
        ]
        distinct += bool(gaps) and min(gaps) > DISTINCT
    spread = 0.0
    if groups.shape[1] > 1:
        z = embed(groups.reshape(-1, *groups.shape[2:])).reshape(*groups.shape[:2], -1)
        spread = diversity.group_diversity(z).mean()["pairwise_distance"]
    return {
        "keep_colour_shape": kept / groups[:, :, 0, 0, 0].size,
        "all_distinct": distinct / len(sources),
        "spread": spread,
    }


def variation_figures(
    pipe: UnCLIP,
    sources: list[dict],
    per_source: int,
    seed: int,
    decode: dict,
    embed: Callable[[np.ndarray], np.ndarray],
    etas: list[float],
) -> dict:
    """Variations (§3.1) from the sources' DDIM inversions at each η of `etas` and from fresh
    noise: keep-rate, distinctness and spread (under `embed`, an independent CLIP); the gate
    keys at the default η (VARIATION_ETA); and the unguided η = 0 reconstruction's MSE at the
    decoder's resolution against an unguided fresh-noise variation's (the same settings but x_T)."""
    images = [d["image"] for d in sources]
    by_mode = {}
    for eta in sorted({*etas, VARIATION_ETA}):
        n = 1 if eta == 0 else per_source  # η = 0: n copies of one decode
        groups = pipe.variations_batch(images, n, seed=seed, eta=eta, **decode)
        by_mode[f"eta_{eta:g}"] = _variation_reads(sources, groups, embed)
    fresh = pipe.variations_batch(images, per_source, seed=seed, x_T="random", **decode)
    by_mode["fresh"] = _variation_reads(sources, fresh, embed)
    default = by_mode[f"eta_{VARIATION_ETA:g}"]

    unguided = {**decode, "decoder_guidance": 1.0, "upsample": False}
    mse = _mse_to_sources(pipe.reconstruct_batch(images, seed, **unguided), images)
    fresh_low = pipe.variations_batch(images, 1, seed, x_T="random", **unguided)[:, 0]
    mse_fresh = _mse_to_sources(fresh_low, images)
    return {
        "variations_eta": VARIATION_ETA,
        "variations_keep_colour_shape": default["keep_colour_shape"],
        "variations_all_distinct": default["all_distinct"],
        "variations_spread_vs_fresh": default["spread"] / max(by_mode["fresh"]["spread"], 1e-12),
        "variations_by_mode": by_mode,
        "reconstruction_mse": mse,
        "reconstruction_mse_fresh": mse_fresh,
        "reconstruction_mse_ratio": mse / max(mse_fresh, 1e-12),
    }


def interpolation_figures(
    pipe: UnCLIP, data: list[dict], count: int, frames: int, seed: int, decode: dict
) -> dict:
    """Interpolations (§3.2, x_T slerped between the DDIM inversions, η = 0) between held-out
    images of different colours read as A's colour, then B's; and the unguided end frames'
    MSE at the decoder's resolution against those of a fixed random x_T."""
    pairs = [(a, b) for a, b in itertools.pairwise(data) if a["colour"] != b["colour"]]
    pairs = pairs[:count]
    images_a, images_b = [a["image"] for a, _ in pairs], [b["image"] for _, b in pairs]
    paths = pipe.interpolate_batch(images_a, images_b, frames, seed=seed, **decode)
    good = sum(
        reads_as(f[0], a["colour"]) and reads_as(f[-1], b["colour"])
        for (a, b), f in zip(pairs, paths, strict=True)
    )
    unguided = {**decode, "decoder_guidance": 1.0, "upsample": False}
    ends_sources = [image for pair in zip(images_a, images_b, strict=True) for image in pair]
    mse = {}
    for x_T in ("inverted", "random"):
        ends = pipe.interpolate_batch(images_a, images_b, 2, seed, x_T=x_T, **unguided)
        mse[x_T] = _mse_to_sources(ends.reshape(-1, *ends.shape[2:]), ends_sources)
    return {
        "interpolation_endpoints": good / len(pairs),
        "interpolation_end_mse": mse["inverted"],
        "interpolation_end_mse_fixed": mse["random"],
        "interpolation_end_mse_ratio": mse["inverted"] / max(mse["random"], 1e-12),
    }


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
    reads = [
        [reads_as(x, "blue", d["shape"]) for x in row] for d, row in zip(reds, edits, strict=True)
    ]
    hits = np.mean(reads, axis=0)
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
    generate, decode = options(s, GenerateOptions), options(s, DecoderOptions)
    figures: dict = {"sampling": s.to_dict()}
    timings: dict[str, float] = {}

    timed(timings, "grid", lambda: samples_grid(pipe, config, out, generate))
    captions = single_captions(e.num_single)
    images = timed(
        timings, "single", lambda: pipe.generate(captions, 1, seed=s.seed + 1, **generate)
    )
    figures |= oracle_accuracy(images, captions)
    figures |= timed(
        timings, "ar_prior", lambda: ar_prior_figures(pipeline_dir, captions, s.seed + 1, decode)
    )
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
    figures |= timed(
        timings,
        "variations",
        lambda: variation_figures(
            pipe,
            sources,
            e.variations_per_source,
            s.seed + 3,
            decode,
            scorer.embed_images,
            list(e.variation_etas),
        ),
    )
    figures |= timed(
        timings,
        "interpolations",
        lambda: interpolation_figures(
            pipe, data, e.num_interpolations, e.interpolation_frames, s.seed + 4, decode
        ),
    )
    figures |= timed(
        timings,
        "text_diffs",
        lambda: text_diff_figures(
            pipe, data, e.num_text_diffs, list(e.text_diff_thetas), s.seed + 5, decode
        ),
    )
    figures["sampling_seconds"] = {k: round(v, 1) for k, v in timings.items()}
    logging.info("demo figures: %s", json.dumps(figures))
    return figures
