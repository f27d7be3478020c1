"""The oracle's figures per image: binding judged on real two-object images of the 32 px shapes
(the study's data), where the truth is known."""

import numpy as np

from unclip_jax.data import shapes_captions, shapes_render
from unclip_jax.evals import demo_metrics

CONFIG = next(c for c in shapes_captions.CONFIGS if c.name == "32px")


def two_object_examples(count: int) -> list[dict]:
    examples = (shapes_captions.make_example(CONFIG, "test", i) for i in range(4 * count))
    return [e for e in examples if e["num_objects"] == 2][:count]


def swapped_colours(example: dict) -> str:
    """ "a {colour b} {shape a} and a {colour a} {shape b}": each colour on the other shape."""
    (ca, cb), (sa, sb) = (
        [shapes_render.COLOURS[i] for i in example["object_colour"][:2]],
        [shapes_render.SHAPES[i] for i in example["object_shape"][:2]],
    )
    return f"a {cb} {sa} and a {ca} {sb}".replace("a o", "an o")


def test_binding_reads_real_two_object_images():
    examples = two_object_examples(200)
    images = np.stack([e["image"] for e in examples])
    captions = [e["captions"][0] for e in examples]
    hits = demo_metrics.binding_hits(images, captions)
    assert hits.shape == (200,) and hits.mean() >= 0.95, hits.mean()
    # each colour given to the other shape: bound wrongly, unless both colours or shapes agree
    differ = [
        e["object_colour"][0] != e["object_colour"][1]
        and e["object_shape"][0] != e["object_shape"][1]
        for e in examples
    ]
    swapped = demo_metrics.binding_hits(images, [swapped_colours(e) for e in examples])
    assert sum(differ) > 100 and swapped[differ].mean() <= 0.02, swapped[differ].mean()


def test_single_object_hits_are_per_image():
    examples = [shapes_captions.make_example(CONFIG, "test", i) for i in range(60)]
    singles = [e for e in examples if e["num_objects"] == 1][:20]
    images = np.stack([e["image"] for e in singles])
    truth = [
        f"a {shapes_render.COLOURS[e['object_colour'][0]]} "
        f"{shapes_render.SHAPES[e['object_shape'][0]]}"
        for e in singles
    ]
    hits = demo_metrics.single_object_hits(images, truth)
    assert hits["colour"].shape == (20,) and hits["colour"].mean() >= 0.9
    wrong = ["a red star" if "red" not in t else "a blue star" for t in truth]
    assert not demo_metrics.single_object_hits(images, wrong)["colour"].any()
    assert demo_metrics.single_object_accuracy(images, truth)["colour"] == hits["colour"].mean()
