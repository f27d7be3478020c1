"""Files written by an earlier layout of the package load and sample identically: the pipeline
directory and the decoder training checkpoint of `tests/fixtures/format_v1/` (written by
`tests/fixtures/make_format_fixture.py` at the commit in `written_by.txt`)."""

import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny_pipeline

from unclip_jax.pipelines import UnCLIP
from unclip_jax.pipelines.store import read_stage
from unclip_jax.storage.checkpoints import restore_ema_params
from unclip_jax.train.checkpoints import Checkpoints
from unclip_jax.train.state import TrainState

FIXTURE = Path(__file__).parent / "fixtures" / "format_v1"
PROMPTS = ["a red circle", "a large blue square"]


@pytest.fixture(scope="module")
def fixture_copy(tmp_path_factory) -> Path:
    """A copy, so that nothing a test does touches the committed files."""
    out = tmp_path_factory.mktemp("format_v1") / "format_v1"
    shutil.copytree(FIXTURE, out)
    return out


def test_pipeline_directory_samples_identically(fixture_copy):
    expected = np.load(fixture_copy / "expected.npz")["images"]
    images = UnCLIP.load(fixture_copy / "pipeline", num_devices=1).generate_float(
        PROMPTS, 2, seed=0
    )["images"]
    # Not bitwise: XLA:CPU compiles for the machine's CPU (its vector width and fused
    # multiply-adds), so sums round differently from one CPU model to another; the images written
    # on an Intel Xeon differ on an AMD EPYC by at most 6.1e-5 (2 of 3,072 values above 1e-6).
    np.testing.assert_allclose(images, expected, atol=5e-4, rtol=0)


def test_training_checkpoint_resumes_and_exports(fixture_copy):
    decoder_params = read_stage(fixture_copy / "pipeline" / "decoder", "decoder").params
    checkpoints_dir = fixture_copy / "decoder_workdir" / "checkpoints"
    ema = restore_ema_params(checkpoints_dir)
    jax.tree.map(np.testing.assert_array_equal, ema, decoder_params)

    params = jax.tree.map(jnp.asarray, decoder_params)
    target = TrainState(
        step=jnp.int32(0),
        params=params,
        ema_params=params,
        opt_state=optax.adam(1e-3).init(params),
        nonfinite_streak=jnp.int32(0),
        nonfinite_total=jnp.int32(0),
    )
    checkpoints = Checkpoints(checkpoints_dir, async_save=False)
    state, data_state = checkpoints.restore(checkpoints.latest_step(), target)
    checkpoints.close()
    assert int(state.step) == 7 and int(state.nonfinite_total) == 1
    assert data_state == {"position": 3}
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, np.asarray(b) + 0.5, atol=1e-6),
        state.params,
        decoder_params,
    )


def test_the_fixture_is_the_tiny_pipeline(fixture_copy):
    """The fixture's stages are the ones `tiny_pipeline` builds (the writer's models)."""
    settings = read_stage(fixture_copy / "pipeline" / "decoder", "decoder").settings
    assert settings["model"]["num_image_tokens"] == tiny_pipeline.DECODER_MODEL["num_image_tokens"]
