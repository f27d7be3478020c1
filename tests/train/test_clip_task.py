"""The contrastive CLIP stage: a smoke run through the training loop on rendered shapes (CI),
and the learning gate on the 32 px shapes set (slow)."""

import functools
import time

import flax.linen as nn
import jax
import numpy as np
import pytest
import task_helpers

from unclip_jax.convert import hf_clip
from unclip_jax.data import shapes_captions
from unclip_jax.text.tokenizer import load_tokenizer
from unclip_jax.train import clip_task

_config = functools.partial(task_helpers.config_file, "clip_shapes")
_rendered = functools.partial(task_helpers.rendered, "32px")  # (split, count)


def test_shapes_targets_index_the_candidates():
    candidates = clip_task.shapes_candidates()
    assert len(candidates) == len(set(candidates)) == 48
    singles = [e for e in _rendered("test", 40) if e["num_objects"] == 1]
    assert singles
    for example in singles:
        _, size, colour, shape = candidates[clip_task.shapes_target(example)].split()
        for caption in example["captions"]:  # every caption names colour and shape
            words = caption.split()
            assert colour in words and shape in words, (caption, colour, shape)
            assert not {"small", "large"} & set(words) or size in words, (caption, size)


def test_smoke_run_trains_and_exports_a_checkpoint_to_fine_tune(tmp_path):
    config = _config("smoke")
    train, test = _rendered("train", 64), _rendered("test", 64)
    metrics = clip_task.run(config, tmp_path / "scratch", train, test)
    assert 0.0 <= metrics["retrieval_top1"] <= 1.0
    model_config, params = hf_clip.load_clip(tmp_path / "scratch" / clip_task.EXPORT_DIR)
    tokenizer = load_tokenizer(tmp_path / "scratch" / clip_task.EXPORT_DIR / "tokenizer")
    assert model_config.text.vocab_size == tokenizer.vocab_size
    assert model_config.vision.patch_size == config.model.vision.patch_size
    assert np.isfinite(hf_clip.num_params(params))

    # Fine-tuning starts from the exported weights, boxed with their logical axes.
    task = clip_task.CLIPTask(model_config, init_params=params["params"])
    spec = {"tokens": jax.ShapeDtypeStruct((1, model_config.text.context_length), np.int32)}
    boxed = jax.jit(lambda key: task.init(key, spec))(jax.random.key(1))
    assert all(
        isinstance(leaf, nn.Partitioned)
        for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    )
    for a, b in zip(
        jax.tree.leaves(nn.unbox(boxed)), jax.tree.leaves(params["params"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_retrieval_gate_on_32px_shapes(tmp_path):
    """≤ 3 minutes of training (compile and data build excluded) → ≥ 90% top-1 image→caption
    retrieval over the 48 single-object captions, on held-out single-object test images."""
    config = _config()
    config.data.data_dir = str(tmp_path / "tfds")
    config.train.eval_every = 0
    builder = shapes_captions.build("32px", data_dir=config.data.data_dir)
    train, test = builder.as_data_source("train"), builder.as_data_source("test")
    marks: dict[int, float] = {}
    hook = lambda step, state: marks.setdefault(step, time.perf_counter())
    metrics = clip_task.run(config, tmp_path / "run", train, test, hooks=[hook])
    seconds = marks[config.train.total_steps] - marks[1]
    print(
        f"CLIP shapes gate: {config.train.total_steps} steps in {seconds:.0f} s of training, "
        f"retrieval top-1 {metrics['retrieval_top1']:.3f}"
    )
    assert seconds <= 180
    assert metrics["retrieval_top1"] >= 0.90
