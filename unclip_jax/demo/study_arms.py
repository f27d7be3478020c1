"""How each arm of the study samples, and its figures per training replicate and guidance scale
(`configs/study.py` names the arms).

Per replicate (conditioning CLIP c, training seed s) and decoder guidance g (for DALL·E: per
N of best-of-N reranking, `RerankedDraws`), an arm draws
`images_per_caption` images of each single-object caption and one of each two-object caption,
all with the same seeds in every arm, and records per caption (so that intervals can be drawn
over seeds, then captions, `evals.bootstrap`):

- `colour`, `colour_shape`: the oracle reads one object of the caption's colour (and shape);
- `clip_score`: 100·cos under the score CLIP (trained from another seed);
- `diversity`: mean pairwise 1 − cos of the caption's images in the score CLIP's image space;
- `binding` (two-object captions): both objects with their own colour and shape, nothing else;

and per replicate `fd`: image-bootstrap replicates of the Fréchet distance in the score CLIP's
space between the single-caption samples and as many held-out single-object images, and
`layout_entropy`: the oracle-read layouts' entropy over the data's. Arm A also records, per
held-out source image, its variations' keep-rate of colour and shape and their layouts' entropy.
"""

from collections.abc import Callable

import ml_collections
import numpy as np

from unclip_jax.data import shapes_render
from unclip_jax.demo import evaluate
from unclip_jax.evals import demo_metrics, diversity, frechet
from unclip_jax.evals.clip_score import CLIPScorer
from unclip_jax.pipelines.dalle import Dalle
from unclip_jax.pipelines.images import to_uint8
from unclip_jax.pipelines.unclip import UnCLIP
from unclip_jax.sampling.rerank import best_rows

FD_REPLICATES = 200  # image-bootstrap replicates of each FD


class References:
    """What every arm is measured against: the captions, held-out images and score CLIP."""

    def __init__(self, config: ml_collections.ConfigDict, scorer: CLIPScorer):
        e = config.eval
        self.scorer = scorer
        self.single = evaluate.single_captions(e.num_single)
        self.pairs = evaluate.pair_captions(e.num_pair, np.random.default_rng(config.sampling.seed))
        count = e.num_single * e.images_per_caption
        # single-object images of the test split (FD's reference, layouts, variation sources)
        # and of the validation split (FD's floor: held-out against held-out)
        self.data = evaluate.held_out(config, 4 * count)[:count]
        floor = evaluate.held_out(config, 4 * count, split="validation")[:count]
        if len(self.data) < count or len(floor) < count:
            raise ValueError(f"the held-out splits hold fewer than {count} single-object images")
        self.size = evaluate.size_threshold(self.data)
        self.data_features = scorer.embed_images(np.stack([d["image"] for d in self.data]))
        floor_features = scorer.embed_images(np.stack([d["image"] for d in floor]))
        self.fd_floor = frechet.frechet_distance(self.data_features, floor_features)


def arm_generate(embedding: str, pipe: UnCLIP, text_norm: float) -> Callable[..., np.ndarray]:
    """`generate(captions, n, seed, guidance) -> uint8 [P·n, S, S, 3]` of an arm whose decoder
    reads z_i from the prior ("prior"), the text embedding z_t scaled to `text_norm` (the mean
    ‖z_i‖ of held-out images; "text"), or the decoder's learned null ("null")."""

    def generate(captions: list[str], n: int, seed: int, guidance: float, **options) -> np.ndarray:
        """uint8 [P·n, S, S, 3] at decoder guidance `guidance`."""
        extra = {}
        if embedding == "null":
            extra["null_image"] = True
        elif embedding == "text":
            ids, mask = pipe.clip.tokenize(captions)
            z_t = np.asarray(pipe.clip.encode_text(ids, mask)[0], np.float64)
            z_t *= text_norm / np.linalg.norm(z_t, axis=-1, keepdims=True)
            extra["image_embeds"] = np.repeat(z_t, n, axis=0)
        out = pipe.generate_float(captions, n, seed, decoder_guidance=guidance, **options, **extra)
        return to_uint8(out["images"])

    return generate


def _fd_replicates(samples: np.ndarray, reference: np.ndarray, rng: np.random.Generator) -> list:
    """FD² of the sets, then of FD_REPLICATES resamples of both with replacement."""
    values = [frechet.frechet_distance(samples, reference)]
    for _ in range(FD_REPLICATES):
        a = samples[rng.integers(len(samples), size=len(samples))]
        b = reference[rng.integers(len(reference), size=len(reference))]
        values.append(frechet.frechet_distance(a, b))
    return [round(v, 6) for v in values]


class RerankedDraws:
    """DALL·E's images for captions, each the best by the pipeline's CLIP of its first N
    candidates among `most` drawn once (each candidate from its own key, `pipelines.dalle`: the
    first N are what `rerank_candidates=N` would draw under other keys)."""

    def __init__(self, pipe: Dalle, most: int):
        self.pipe, self.most = pipe, most
        self.drawn: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def best_of(self, n: int) -> Callable[..., np.ndarray]:
        """`generate(captions, k, seed) -> uint8 [P·k, S, S, 3]`, each image the best of n."""

        def generate(captions: list[str], k: int, seed: int, **options) -> np.ndarray:
            key = (tuple(captions), k, seed)
            if key not in self.drawn:
                out = self.pipe.generate_float(captions, k * self.most, seed, **options)
                images = to_uint8(out["images"]).reshape(len(captions) * k, self.most, -1)
                self.drawn[key] = images, np.asarray(out["scores"]).reshape(-1, self.most)
            images, scores = self.drawn[key]
            rows = best_rows(scores[:, :n].reshape(-1), n)
            size = self.pipe.image_size
            return images[:, :n].reshape(-1, size, size, 3)[rows]

        return generate


def sample_figures(generate, refs: References, seed: int, k: int, options: dict) -> dict:
    """The figures of one replicate at one setting of `generate(captions, n, seed, **options)`
    (a guidance scale, a reranking N; see the module's docstring)."""
    single = generate(refs.single, k, seed, **options)
    captions = [c for c in refs.single for _ in range(k)]
    hits = demo_metrics.single_object_hits(single, captions)
    features = refs.scorer.embed_images(single)
    text = refs.scorer.embed_texts(refs.single)
    scores = 100.0 * np.sum(features.reshape(len(refs.single), k, -1) * text[:, None], axis=-1)
    spread = diversity.group_diversity(features.reshape(len(refs.single), k, -1))
    pairs = generate(refs.pairs, 1, seed + 1, **options)
    layouts = evaluate.layout_diversity(single, captions, refs.data)
    per_caption = {
        "colour": hits["colour"].reshape(-1, k).mean(axis=1),
        "colour_shape": hits["colour_shape"].reshape(-1, k).mean(axis=1),
        "clip_score": scores.mean(axis=1),
        "diversity": spread.pairwise_distance,
        "binding": demo_metrics.binding_hits(pairs, refs.pairs).astype(float),
    }
    figures = {name: np.round(v, 6).tolist() for name, v in per_caption.items()}
    rng = np.random.default_rng(seed)
    figures["fd"] = _fd_replicates(features, refs.data_features, rng)
    figures["layout_entropy"] = layouts
    return figures


def variation_figures(pipe: UnCLIP, refs: References, count: int, n: int, seed: int) -> dict:
    """Per held-out source: the share of its n variations (§3.1, from its DDIM inversion) read
    with its colour and shape, and the entropy of their oracle-read layouts."""
    sources = refs.data[:count]
    groups = pipe.variations_batch([d["image"] for d in sources], n, seed=seed)
    kept, layouts = [], []
    for d, group in zip(sources, groups, strict=True):
        kept.append(np.mean([evaluate.reads_as(v, d["colour"], d["shape"]) for v in group]))
        layouts.append(demo_metrics.entropy([demo_metrics.layout(v, refs.size) for v in group]))
    return {"variation_kept": np.round(kept, 6).tolist(), "variation_layouts": layouts}


def chance_of_reading() -> float:
    """The keep-rate of variations drawn at random: one colour–shape pair of all."""
    return 1.0 / (len(shapes_render.COLOURS) * len(shapes_render.SHAPES))
