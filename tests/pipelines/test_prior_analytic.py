"""The prior's Γ table on its way from the trainer's workdir into the pipeline's prior stage: the
export carries it into stage.json, the stage samples with it, and a prior asked for the analytic
variance without it is refused in one line naming the file."""

import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
import tiny_pipeline

from unclip_jax.diffusion.analytic import TABLE_FILE, AnalyticTable
from unclip_jax.pipelines import stages, store
from unclip_jax.sampling.prior import EncodedCaption

STEPS = 100  # the tiny pipeline's train_steps


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
    return tiny_pipeline.build(tmp_path_factory.mktemp("tiny")) / "prior"


def with_settings(prior_dir: Path, tmp_path: Path, **changes) -> store.StageFiles:
    """A copy of the tiny prior stage whose stage.json has `changes` (None removes a key)."""
    directory = tmp_path / "prior"
    shutil.copytree(prior_dir, directory)
    settings = json.loads((directory / store.STAGE_FILE).read_text())
    for name, value in changes.items():
        if value is None:
            settings.pop(name, None)
        else:
            settings[name] = value
    (directory / store.STAGE_FILE).write_text(json.dumps(settings))
    return store.read_stage(directory, store.PRIOR)


def caption(batch: int = 2) -> EncodedCaption:
    keys = jax.random.split(jax.random.key(0), 2)
    context = tiny_pipeline.CONTEXT
    return EncodedCaption(
        jax.random.normal(keys[0], (batch, 16)),
        jax.random.normal(keys[1], (batch, context, 32)),
        jnp.ones((batch, context), bool),
    )


def analytic_diffusion(prior_dir: Path) -> dict:
    settings = json.loads((prior_dir / store.STAGE_FILE).read_text())
    return {**settings["diffusion"], "variance": "analytic"}


def test_prior_stage_samples_with_its_table(prior_dir, tmp_path):
    table = AnalyticTable(np.linspace(0.02, 1.0, STEPS), 1.0, 64)
    files = with_settings(
        prior_dir, tmp_path, diffusion=analytic_diffusion(prior_dir), analytic=table.to_dict()
    )
    prior = stages.PriorStage(files)
    np.testing.assert_array_equal(prior.analytic.eps_sq_norm, table.eps_sq_norm)
    scales = jnp.array([1.0, 3.0])
    z_i = prior.sample(jax.random.key(1), caption(), 4, scales, 2)
    assert z_i.shape == (2, 16) and np.isfinite(np.asarray(z_i)).all()
    prior.sample(jax.random.key(2), caption(), 3, scales, 2)
    assert prior.compiled_programs() == 1

    # The same prior with the default variance samples other embeddings from the same key.
    fixed = stages.PriorStage(with_settings(prior_dir, tmp_path / "fixed"))
    assert fixed.analytic is None
    other = fixed.sample(jax.random.key(1), caption(), 4, scales, 2)
    assert np.abs(np.asarray(other - z_i)).max() > 1e-4


def test_a_prior_without_its_table_is_refused(prior_dir, tmp_path):
    files = with_settings(prior_dir, tmp_path, diffusion=analytic_diffusion(prior_dir))
    stage_file = files.directory / store.STAGE_FILE
    with pytest.raises(ValueError) as error:
        stages.PriorStage(files)
    assert str(error.value) == (
        f"{stage_file}: variance 'analytic' needs the prior's Γ table ('analytic'), absent"
    )
    short = AnalyticTable(np.ones(STEPS - 1), 1.0, 1).to_dict()
    files = with_settings(
        prior_dir, tmp_path / "short", diffusion=analytic_diffusion(prior_dir), analytic=short
    )
    with pytest.raises(ValueError, match=r"holds Γ for 99 timesteps; 'diffusion' has train_steps"):
        stages.PriorStage(files)


def test_export_carries_the_table_beside_the_normalizer(tmp_path):
    config = ml_collections.ConfigDict(
        dict(
            model=dict(embed_dim=16),
            diffusion=dict(schedule="cosine", train_steps=STEPS, prediction="x0"),
        )
    )
    normalizer_file = tmp_path / "embedding_normalizer.json"
    normalizer_file.write_text(json.dumps({"kind": "unit_norm", "mean": None, "std": None}))
    assert "analytic" not in store.prior_settings(config, normalizer_file)

    config.diffusion.variance = "analytic"
    with pytest.raises(FileNotFoundError, match=f"{TABLE_FILE} is missing: the prior samples"):
        store.prior_settings(config, normalizer_file)
    table = AnalyticTable(np.full(STEPS, 0.5), 0.9, 32)
    (tmp_path / TABLE_FILE).write_text(json.dumps(table.to_dict()))
    settings = store.prior_settings(config, normalizer_file)
    assert settings["analytic"] == table.to_dict()
    assert settings["diffusion"]["variance"] == "analytic"
