"""Workdirs and pipeline directories at `gs://` URIs, through a local stand-in for the bucket.

The stand-in (`bucket`) maps `gs://NAME/KEY` to `<tmp>/NAME/KEY` where the libraries reach
storage: etils.epath's backend for `gs://` (tf.io.gfile, or fsspec without TensorFlow; the
package, orbax's directory handling and the TensorBoard and run.log writers all go through it),
and the TensorStore kvstore that orbax builds for a `gs://` path (a `file` kvstore instead of
`gcs`: where the arrays go); orbax's question whether the bucket has a hierarchical namespace is
answered "no". Everything above that runs as against a bucket: the package hands the URIs as
strings to epath and orbax, and orbax takes its GCS code paths (step directories written in
place and committed by a `commit_success.txt`, old steps deleted the GCS way). A `pathlib` or
`os.path` call on a URI shows here as a `gs:` folder in the working directory or a missing file.

Not exercised: TensorFlow's GCS filesystem and TensorStore's GCS driver themselves
(authentication, retries, rate limits, a file uploaded only when flushed or closed), the OCDBT
layout orbax picks for a `gcs` kvstore (it sees a `file` one), and a bucket's own semantics (no
directories, renames that copy object by object, listings that lag).
"""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import logging as absl_logging
from etils import epath

from unclip_jax.convert import hf_clip
from unclip_jax.pipelines import store
from unclip_jax.pipelines.unclip import UnCLIP
from unclip_jax.storage import checkpoints as storage
from unclip_jax.storage import run_record
from unclip_jax.storage.tokenizers import load_tokenizer
from unclip_jax.train import clip_task, run_config

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
import task_helpers


def test_training_writes_and_resumes_in_a_bucket(bucket):
    """The CLIP smoke run with its workdir in the bucket, then resumed there for one more step:
    checkpoints committed the GCS way, TensorBoard events, run.json and run.log, the run's
    tokenizer and the exported CLIP all in the bucket and readable back from it."""
    workdir = "gs://runs/clip"
    config = task_helpers.config_file("clip_shapes", "smoke")
    config.model.text.layers = config.model.vision.layers = 1  # compiles in half the time
    train = task_helpers.rendered("32px", "train", 64)
    assert str(run_config.check_workdir(workdir)) == workdir
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)  # the loop's lines, for run.log
    try:
        clip_task.run(config, workdir, train, None)
        config.train.total_steps = 4
        clip_task.run(config, workdir, train, None)
    finally:
        absl_logging.set_verbosity(verbosity)

    local = bucket.root / "runs" / "clip"
    # max_to_keep=1: step 3 deleted from the bucket once step 4 was committed, the GCS way.
    assert storage.complete_steps(epath.Path(workdir) / "checkpoints") == [4]
    assert (local / "checkpoints" / "4" / "commit_success.txt").is_file()
    runs = run_record.read_records(workdir)
    assert [run["config"]["train"]["total_steps"] for run in runs] == [3, 4]
    log = (local / "run.log").read_text()
    assert "step 3 train:" in log and "step 4 train:" in log
    events = sorted((local / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 2 and all(b"train/loss" in e.read_bytes() for e in events)  # a run each

    exported = f"{workdir}/{clip_task.EXPORT_DIR}"
    model_config, params = hf_clip.load_clip(exported)
    tokenizer = load_tokenizer(f"{exported}/{hf_clip.TOKENIZER_DIR}")
    assert model_config.text.vocab_size == tokenizer.vocab_size
    ema = storage.restore_ema_params(f"{workdir}/checkpoints")
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(params["params"]), strict=True):
        np.testing.assert_array_equal(a, b)

    (local / "checkpoints" / "5" / storage.EMA).mkdir(parents=True)  # a save never committed
    assert storage.complete_steps(epath.Path(workdir) / "checkpoints") == [4]
    with pytest.raises(ValueError, match="is incomplete"):
        storage.resolve_step_dir(f"{workdir}/checkpoints/5")


def test_a_pipeline_written_to_a_bucket_loads_and_samples_as_the_local_one(bucket, pipeline_dir):
    """The tiny pipeline rewritten into the bucket by `store.write_pipeline`, loaded from its
    URI by `UnCLIP.load`: the same images as from the local directory, bit for bit."""
    files = store.read_pipeline(pipeline_dir)
    uri = "gs://models/tiny"
    written = store.write_pipeline(
        uri,
        clip_dir=pipeline_dir / store.CLIP_DIR,
        prior=(files.prior.settings, files.prior.params),
        decoder=(files.decoder.settings, files.decoder.params),
        upsamplers=[(u.settings, u.params) for u in files.upsamplers],
    )
    assert str(written) == uri
    assert (bucket.root / "models" / "tiny" / store.MANIFEST).is_file()
    assert not (bucket.root / "models" / "tiny.tmp").exists()

    prompts = ["a red circle", "a large blue square"]
    here = UnCLIP.load(pipeline_dir, num_devices=1).generate(prompts, 1, seed=3)
    there = UnCLIP.load(uri, num_devices=1).generate(prompts, 1, seed=3)
    np.testing.assert_array_equal(there, here)
