"""The DALL·E demo's figures, from its pipeline directory and the held-out shapes (`demo.dalle`
runs it); images are read by the shapes oracle at the pipeline's resolution, on fresh seeds.

- text → image: colour and colour+shape accuracy of single-object captions "a {colour} {shape}"
  without reranking (`oracle_*`) and with best-of-N CLIP reranking (§2.3, `reranked_oracle_*`),
  and the curve over N: the most candidates of the curve are drawn once per caption and N
  reranks the first N of them (each row is drawn from its own key, `pipelines.dalle`, so these
  are the candidates `generate(..., rerank_candidates=N)` would draw under other keys);
- the dVAE: held-out images encoded and decoded through their hard codes, read for colour and
  shape; the perplexity of those codes' distribution (how many codes are in use);
- completion (the paper's image-to-image prompting): the top half of a held-out image's code rows
  kept, the rest drawn for the image's own caption; the share read in the kept shape's colour.
"""

import json
import math
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging

from unclip_jax.demo.evaluate import (
    held_out,
    oracle_accuracy,
    reads_as,
    samples_grid,
    single_captions,
    timed,
)
from unclip_jax.evals import demo_metrics
from unclip_jax.models.dvae import FrozenDVAE
from unclip_jax.pipelines.dalle import Dalle
from unclip_jax.pipelines.images import to_uint8
from unclip_jax.sampling.rerank import best_rows

SAMPLES_FILE = "dalle_samples.png"


def rerank_curve(pipe: Dalle, captions: list[str], curve: list[int], seed: int) -> dict[int, dict]:
    """For each N of `curve`: oracle accuracy (`oracle_colour`, `oracle_colour_shape`) and mean
    CLIP score (`clip_score`) of the best of the first N of max(curve) candidates per caption."""
    most = max(curve)
    drawn = pipe.generate_float(captions, most, seed)
    images = to_uint8(drawn["images"]).reshape(len(captions), most, *drawn["images"].shape[1:])
    scores = np.asarray(drawn["scores"]).reshape(len(captions), most)
    figures = {}
    for n in curve:
        rows = best_rows(scores[:, :n].reshape(-1), n)  # [P] into the first n per caption
        kept = images[:, :n].reshape(-1, *images.shape[2:])[rows]
        clip_score = float(np.mean(scores[:, :n].reshape(-1)[rows]))
        figures[n] = oracle_accuracy(kept, captions) | {"clip_score": clip_score}
    return figures


def code_perplexity(codes: np.ndarray) -> float:
    """exp(entropy) of the empirical distribution of `codes` (any shape): the number of equally
    used codes that would give the same entropy."""
    return math.exp(demo_metrics.entropy(np.asarray(codes).ravel().tolist()))


def dvae_figures(pipe: Dalle, data: list[dict], batch: int = 64) -> dict:
    """Held-out images through the pipeline's dVAE (hard codes): the oracle's colour and
    colour+shape accuracy of the reconstructions, and the codes' perplexity."""
    codes = np.stack([pipe.encode_image(d["image"]) for d in data])  # [N, h·w]
    decode = jax.jit(FrozenDVAE.decode)
    images = np.concatenate(
        [to_uint8(decode(pipe.dvae, codes[i : i + batch])) for i in range(0, len(codes), batch)]
    )
    accuracy = demo_metrics.single_object_accuracy(images, [d["caption"] for d in data])
    return {
        "dvae_reconstruction_colour": accuracy["colour"],
        "dvae_reconstruction_colour_shape": accuracy["colour_shape"],
        "dvae_codebook_perplexity": code_perplexity(codes),
        "dvae_vocab_size": pipe.dvae.config.vocab_size,
    }


def completion_figures(pipe: Dalle, data: list[dict], seed: int) -> dict:
    """Each held-out image completed once from the top half of its code rows for its caption
    "a {colour} {shape}": the share read in its colour (and in its colour and shape)."""
    keep_rows = pipe.model.config.grid // 2
    colour = colour_shape = 0
    for index, d in enumerate(data):
        (image,) = pipe.complete(d["image"], d["caption"], keep_rows, 1, seed=seed + index)
        colour += reads_as(image, d["colour"])
        colour_shape += reads_as(image, d["colour"], d["shape"])
    return {
        "completion_keep_rows": keep_rows,
        "completion_colour": colour / len(data),
        "completion_colour_shape": colour_shape / len(data),
    }


def evaluate(
    config: ml_collections.ConfigDict, pipeline_dir: Path, workdir: Path, out: Path
) -> dict:
    """Samples, scores and writes `<out>/dalle_samples.png`; returns the figures."""
    del workdir  # everything is read from the pipeline directory
    s, e = config.sampling, config.eval
    pipe = Dalle.load(pipeline_dir, progress=True)
    figures: dict = {
        "sampling": s.to_dict() | {"codes": pipe.sampling},
        "image_size": pipe.image_size,
    }
    timings: dict[str, float] = {}

    grid_options = {"rerank_candidates": s.rerank_candidates}
    timed(timings, "grid", lambda: samples_grid(pipe, config, out, grid_options, SAMPLES_FILE))
    captions = single_captions(e.num_single)
    curve = sorted({1, s.rerank_candidates, *s.rerank_curve})
    by_n = timed(timings, "single", lambda: rerank_curve(pipe, captions, curve, s.seed + 1))
    figures |= {k: by_n[1][k] for k in ("oracle_colour", "oracle_colour_shape")}
    figures["rerank_candidates"] = s.rerank_candidates
    reranked = by_n[s.rerank_candidates]
    figures |= {f"reranked_{k}": reranked[k] for k in ("oracle_colour", "oracle_colour_shape")}
    figures["rerank_curve"] = {str(n): by_n[n] for n in curve}

    data = held_out(config, max(e.num_reconstructions, e.num_completions))
    figures |= timed(timings, "dvae", lambda: dvae_figures(pipe, data[: e.num_reconstructions]))
    figures |= timed(
        timings,
        "completion",
        lambda: completion_figures(pipe, data[: e.num_completions], s.seed + 2),
    )
    figures["sampling_seconds"] = {k: round(v, 1) for k, v in timings.items()}
    logging.info("demo figures: %s", json.dumps(figures))
    return figures
