"""The main job: its stages wired to each other; the slow gate runs `make demo`'s command and
checks the figures of the pipeline issue."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unclip_jax.demo import run as demo

ROOT = Path(__file__).parents[2]


def test_stage_configs_are_wired_to_earlier_stages(tmp_path):
    sys.path.insert(0, str(ROOT))
    from configs import demo as demo_config

    config = demo_config.get_config()
    sections = demo.stage_configs(config, tmp_path)
    assert sections["prior"].data.train_dir == str(tmp_path / "embeddings" / "train")
    assert sections["decoder"].clip_dir == str(tmp_path / "clip" / "clip")
    assert sections["prior"].model.num_tokens == sections["clip"].tokenizer.context_length
    assert sections["score_clip"].seed != sections["clip"].seed
    # The AR prior is a stage of its own, trained on the diffusion prior's embeddings.
    assert sections["ar_prior"].trainer == "ar_prior"
    assert sections["ar_prior"].data.to_dict() == sections["prior"].data.to_dict()
    assert sections["ar_prior"].model.num_tokens == sections["clip"].tokenizer.context_length
    assert sections["ar_prior"].sampling.dot_sampling == "top_half"
    stages = ("data", "clip", "score_clip", "embeddings", "prior", "ar_prior", "decoder")
    assert tuple(demo.steps(config, tmp_path)) == (*stages, "upsampler")


@pytest.mark.slow
def test_demo_meets_the_gates(tmp_path):
    workdir = os.environ.get("UNCLIP_DEMO_WORKDIR", str(ROOT / "workdirs" / "demo"))
    out = tmp_path / "demo"
    subprocess.run(
        [sys.executable, "-m", "unclip_jax.demo", "--config=configs/demo.py",
         f"--workdir={workdir}", f"--demo_out={out}"],
        cwd=ROOT, check=True,
    )  # fmt: skip
    figures = json.loads((out / "metrics.json").read_text())
    assert (out / "samples.png").is_file()
    assert figures["oracle_colour"] >= 0.90
    assert figures["oracle_colour_shape"] >= 0.70
    assert figures["variations_keep_colour_shape"] >= 0.80
    assert figures["variations_all_distinct"] >= 0.9
    assert figures["interpolation_endpoints"] >= 0.80
    assert figures["text_diff_best"] >= 0.60
    # What produced the figures: the demo's record and the pipeline's, with each stage's runs.
    assert figures["run"]["demo"]["config"]["clip"] and figures["run"]["demo"]["git"]["commit"]
    (export,) = figures["run"]["pipeline"]
    assert {"prior", "ar_prior", "decoder", "upsampler_0"} <= set(export["stages"])
    assert all(export["stages"][name] for name in ("prior", "decoder", "upsampler_0"))
