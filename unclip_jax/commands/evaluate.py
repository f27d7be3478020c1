"""`unclip eval --images DIR [--score_clip DIR] [--metrics FILE]`: scores the images written by
`unclip generate` (DIR/captions.json names each file's prompt) with the shapes oracle (colour and
colour+shape accuracy of single-object prompts, binding accuracy of two-object prompts) and, with
`--score_clip`, the CLIP score under that independently trained CLIP. Prints the figures as JSON;
`--metrics` also holds the run records ("run": this evaluation's and those of the images' run.json).
"""

import json
from pathlib import Path

import numpy as np
from absl import app, flags

from unclip_jax.commands import common
from unclip_jax.commands.usage import check_usage
from unclip_jax.pipelines import outputs

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(common)
flags.DEFINE_string("images", None, "Directory written by `unclip generate`.")
flags.DEFINE_string("score_clip", None, "CLIP checkpoint directory for the CLIP score.")
flags.DEFINE_string("metrics", None, "Also write the figures to this JSON file.")


def evaluate(images: np.ndarray, captions: list[str], score_clip: str | None) -> dict:
    """Oracle (and CLIP score) figures of images [N, H, W, 3] for their captions."""
    from unclip_jax.evals import demo_metrics, shapes_oracle

    counts = [len(shapes_oracle.parse_caption(c)[0]) for c in captions]
    figures: dict = {"num_images": len(captions)}
    single = [i for i, n in enumerate(counts) if n == 1]
    pair = [i for i, n in enumerate(counts) if n == 2]
    if single:
        accuracy = demo_metrics.single_object_accuracy(
            images[single], [captions[i] for i in single]
        )
        figures.update({f"single_{k}": v for k, v in accuracy.items()})
    if pair:
        figures["binding"] = demo_metrics.binding_accuracy(
            images[pair], [captions[i] for i in pair]
        )
    if score_clip:
        from unclip_jax.evals.clip_score import CLIPScorer

        figures["clip_score"] = float(np.mean(CLIPScorer(score_clip)(images, captions)))
    return figures


def read_captions(directory: Path) -> dict[str, str]:
    """{file name: prompt} of `directory`'s captions.json; ValueError naming the file when it is
    not a non-empty JSON object of strings."""
    from unclip_jax.storage.json_files import read_json

    index = directory / "captions.json"
    if not index.is_file():
        raise FileNotFoundError(f"{str(index)!r} is missing: --images must come from generate")
    captions = read_json(index, "--images")
    if not captions:
        raise ValueError(f"{index} names no images: expected {{file name: prompt, ...}}")
    bad = [name for name, prompt in captions.items() if not isinstance(prompt, str)]
    if bad:
        value = captions[bad[0]]
        raise ValueError(f"{index}: the prompt of {bad[0]!r} must be a string, got {value!r}")
    return captions


def main(argv: list[str]) -> None:
    check_usage(argv)
    from unclip_jax.pipelines.images import load_image
    from unclip_jax.storage import run_record

    if not FLAGS.images:
        raise ValueError("--images must name a directory written by `unclip generate`")
    directory = Path(FLAGS.images)
    metrics = outputs.check_output_file(FLAGS.metrics) if FLAGS.metrics else None
    captions = read_captions(directory)
    images = {name: load_image(directory / name) for name in captions}
    first = next(iter(images))
    for name, image in images.items():
        if image.shape != images[first].shape:
            raise ValueError(
                f"{directory / name} is {image.shape}, {first} {images[first].shape}: "
                "the images of --images must share one size"
            )
    images = np.stack(list(images.values()))
    if FLAGS.score_clip:
        outputs.enable_compilation_cache(FLAGS.compilation_cache)
    figures = evaluate(images, list(captions.values()), FLAGS.score_clip)
    print(json.dumps(figures, indent=2))  # before writing --metrics: a failed write loses none
    if metrics:
        run = {"eval": run_record.run_record(), "images": run_record.read_records(directory)}
        outputs.write_file(metrics, json.dumps({**figures, "run": run}, indent=2))


if __name__ == "__main__":
    app.run(main)
