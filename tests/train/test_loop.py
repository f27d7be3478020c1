"""The loop in-process: metrics in TensorBoard event files, eval and sample grids, and a run of
non-finite steps stopping with an error while the last good checkpoint stays the latest."""

import json
import logging
import struct

import jax
import ml_collections
import numpy as np
import pytest
import tiny_task
from PIL import Image
from tensorboardX.proto import event_pb2

from unclip_jax import sharding
from unclip_jax.storage import run_record
from unclip_jax.train import loop


def tiny_config(**train) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        {
            "seed": 0,
            "mesh": {"data": 4, "fsdp": 2, "tensor": 1},
            "sharding": {"rules": [list(r) for r in sharding.DEFAULT_RULES]},
            "train": {
                "total_steps": 4,
                "batch_size": 16,
                "grad_accum_steps": 1,
                "compute_dtype": "float32",
                "max_nonfinite_steps": 3,
                "log_every": 2,
                "eval_every": 2,
                "eval_with_ema": True,
                "sample_every": 2,
                "num_samples": 4,
            },
            "optimizer": {
                "peak_lr": 1e-2,
                "warmup_steps": 1,
                "schedule": "cosine",
                "end_lr_factor": 0.0,
                "b1": 0.9,
                "b2": 0.999,
                "eps": 1e-8,
                "weight_decay": 0.0,
                "grad_clip_norm": 1.0,
            },
            "ema": {"decay": 0.9, "warmup": 1.0},
            "checkpoint": {"every_steps": 1, "max_to_keep": 10, "async_save": False},
        }
    )
    config.train.update(train)
    return config


def read_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the TFRecord event files under `directory`."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            record = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_loop_logs_evaluates_and_draws_samples(tmp_path):
    eval_set = tiny_task.TinyIterator(16, seed=99)
    eval_batches = [eval_set.global_batch_at(i) for i in range(2)]
    state = loop.train_and_evaluate(
        tiny_config(),
        tmp_path,
        tiny_task.TinyTask(),
        tiny_task.TinyIterator(16),
        eval_data=lambda: eval_batches,
    )
    assert int(state.step) == 4
    scalars = read_scalars(tmp_path / "tensorboard")
    for tag in (
        "train/loss",
        "train/grad_norm",
        "train/learning_rate",
        "train/samples_per_second",
        "train/step_time",
        "train/nonfinite_total",
        "eval/loss",
        "eval/abs_error",
    ):
        assert [step for step, _ in scalars[tag]] == [2, 4], tag
    assert all(v > 0 for _, v in scalars["train/samples_per_second"])
    # Warm-up of 1 step, then cosine over 3: lr after 1 and 3 applied updates.
    lrs = [v for _, v in scalars["train/learning_rate"]]
    np.testing.assert_allclose(lrs, [1e-2, 1e-2 * 0.5 * (1 + np.cos(np.pi * 2 / 3))], rtol=1e-5)
    grid = np.asarray(Image.open(tmp_path / "samples" / "step_4.png"))
    assert grid.shape == (8, 8, 3) and grid.dtype == np.uint8 and grid.std() > 0
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [1, 2, 3, 4]
    (record,) = run_record.read_records(tmp_path)
    assert record["config"]["train"]["total_steps"] == 4
    assert record["devices"]["count"] == 8 and record["versions"]["jax"]

    longer = tiny_config(total_steps=5)
    loop.train_and_evaluate(longer, tmp_path, tiny_task.TinyTask(), tiny_task.TinyIterator(16))
    records = run_record.read_records(tmp_path)  # the resumed run appended its own
    assert [r["config"]["train"]["total_steps"] for r in records] == [4, 5]


def test_nonfinite_steps_in_a_row_stop_the_run(tmp_path):
    data = tiny_task.TinyIterator(16, poison={2, 3, 4})  # steps 3, 4 and 5
    with pytest.raises(loop.NonFiniteError, match=r"3 consecutive .*up to step 5.* step 2 in"):
        loop.train_and_evaluate(
            tiny_config(total_steps=10, eval_every=0, sample_every=0),
            tmp_path,
            tiny_task.TinyTask(),
            data,
        )
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [1, 2]


def test_batch_size_mismatch_is_rejected_before_compiling(tmp_path):
    with pytest.raises(ValueError, match=r"yields 8 examples .*batch_size is 16"):
        loop.train_and_evaluate(
            tiny_config(), tmp_path, tiny_task.TinyTask(), tiny_task.TinyIterator(8)
        )


def test_count_flops_records_the_step_with_every_micro_batch(tmp_path, caplog):
    """compute.json: the step's FLOPs over all devices, the same whether the batch of 16 runs at
    once or as two scanned micro-batches (the scan's trips counted), at least the matmuls'.
    Counting costs no compile: the train step is compiled once per run."""
    flops = {}
    for accum in (1, 2):
        workdir = tmp_path / f"accum{accum}"
        config = tiny_config(count_flops=True, grad_accum_steps=accum, eval_every=0)
        caplog.clear()
        with jax.log_compiles(), caplog.at_level(logging.WARNING):
            loop.train_and_evaluate(
                config, workdir, tiny_task.TinyTask(), tiny_task.TinyIterator(16)
            )
        compiles = [r for r in caplog.messages if r.startswith("Finished XLA compilation of")]
        assert sum("jit(train_step)" in r for r in compiles) <= 1, compiles
        record = json.loads((workdir / loop.COMPUTE_FILE).read_text())
        assert record["devices"] == 8 and record["total_steps"] == 4
        assert record["flops"] == record["flops_per_step"] * 4
        flops[accum] = record["flops_per_step"]
    d, h = tiny_task.DIM, tiny_task.HIDDEN
    matmuls = 16 * (2 * d * h * 2 + 2 * h * d * 3)  # forward both, backward: 1 for layer 1, 2 for 2
    assert flops[1] >= matmuls
    assert flops[2] == pytest.approx(flops[1], rel=0.1)
