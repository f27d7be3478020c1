"""DALL·E's demo: its stages wired to each other; the smoke config end to end through the command
(every stage for a few steps, the pipeline directory, the grid and the figures); the slow gate
runs `make demo-dalle`'s command and checks the figures of the DALL·E baseline's issue.

Both read the shapes set from TFDS's default directory, building it on first use."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unclip_jax.demo import dalle as demo

ROOT = Path(__file__).parents[2]
FRACTIONS = (
    "oracle_colour",
    "oracle_colour_shape",
    "reranked_oracle_colour",
    "reranked_oracle_colour_shape",
    "dvae_reconstruction_colour",
    "dvae_reconstruction_colour_shape",
    "completion_colour",
    "completion_colour_shape",
)


def run_demo(config: str, workdir: Path | str, out: Path) -> dict:
    """`make demo-dalle`'s command with `config`; the figures it wrote."""
    subprocess.run(
        [sys.executable, "-m", "unclip_jax.demo.dalle", f"--config={config}",
         f"--workdir={workdir}", f"--demo_out={out}"],
        cwd=ROOT, check=True,
    )  # fmt: skip
    assert (out / "dalle_samples.png").is_file()
    return json.loads((out / "dalle_metrics.json").read_text())


def test_stage_configs_are_wired_to_earlier_stages(tmp_path):
    sys.path.insert(0, str(ROOT))
    from configs import demo as unclip_demo
    from configs import demo_dalle

    config = demo_dalle.get_config()
    sections = demo.stage_configs(config, tmp_path)
    assert sections["dalle"].dvae_dir == str(tmp_path / "dvae" / "dvae")
    assert [sections[name].trainer for name in ("clip", "dvae", "dalle")] == [
        "clip",
        "dvae",
        "dalle",
    ]
    # The reranker is the unCLIP demo's CLIP; every stage reads the demo's shapes.
    assert sections["clip"].to_dict() == unclip_demo.get_config().clip.to_dict()
    sources = {sections[name].data.source for name in ("clip", "dvae", "dalle")}
    assert sources == {config.data_source}
    assert tuple(demo.steps(config, tmp_path)) == ("data", "clip", "dvae", "dalle")
    assert {1, 2, 4, 8, 16, 32} <= set(config.sampling.rerank_curve)


def test_smoke_demo_writes_the_grid_and_the_figures(tmp_path):
    figures = run_demo("configs/demo_dalle.py:smoke", tmp_path / "work", tmp_path / "demo")
    for key in FRACTIONS:
        assert 0.0 <= figures[key] <= 1.0, key
    assert list(figures["rerank_curve"]) == ["1", "2"] and figures["rerank_candidates"] == 2
    assert figures["rerank_curve"]["1"]["oracle_colour"] == figures["oracle_colour"]
    # Best of 2 by CLIP score scores at least as high as the first candidate alone.
    curve = figures["rerank_curve"]
    assert curve["2"]["clip_score"] >= curve["1"]["clip_score"] - 1e-6
    assert 1.0 <= figures["dvae_codebook_perplexity"] <= figures["dvae_vocab_size"]
    assert figures["completion_keep_rows"] >= 1
    assert list(figures["stages"]) == ["data", "clip", "dvae", "dalle"]
    assert all(record["seconds"] >= 0 for record in figures["stages"].values())
    assert len(figures["load_average_at_end"]) == 3 and figures["training_seconds"] > 0
    assert (tmp_path / "work" / "pipeline" / "unclip.json").is_file()


@pytest.mark.slow
def test_demo_meets_the_gates(tmp_path):
    workdir = os.environ.get("UNCLIP_DEMO_DALLE_WORKDIR", str(ROOT / "workdirs" / "demo_dalle"))
    figures = run_demo("configs/demo_dalle.py", workdir, tmp_path / "demo")
    assert figures["rerank_candidates"] == 16
    assert figures["reranked_oracle_colour"] >= 0.90
    assert figures["reranked_oracle_colour_shape"] >= 0.70
    assert figures["completion_colour"] >= 0.90
    assert figures["dvae_reconstruction_colour_shape"] >= 0.95
    assert figures["training_seconds"] <= 25 * 60
    assert list(figures["rerank_curve"]) == ["1", "2", "4", "8", "16", "32"]
