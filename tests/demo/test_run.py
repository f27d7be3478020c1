"""The main job: finished stages are skipped unless forced; the slow gate runs `make demo`'s
command and checks the figures of the pipeline issue."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unclip_jax.demo import run as demo

ROOT = Path(__file__).parents[2]


def test_finished_stages_are_skipped_unless_forced(tmp_path):
    calls = []

    def stage(stage_dir: Path) -> None:
        calls.append(stage_dir.name)
        # A forced stage starts in an empty directory (a finished checkpoint would be resumed).
        assert not (stage_dir / "output").exists()
        (stage_dir / "output").write_text(str(len(calls)))

    first = demo.run_stage("prior", tmp_path, set(), stage)
    again = demo.run_stage("prior", tmp_path, set(), stage)
    forced = demo.run_stage("prior", tmp_path, {"prior"}, stage)
    time.sleep(1.1)  # the kept directories are named by the second
    every = demo.run_stage("prior", tmp_path, {"all"}, stage)
    assert calls == ["prior", "prior", "prior"]
    assert not first["skipped"] and again["skipped"] and not forced["skipped"]
    assert not every["skipped"]
    assert again["seconds"] == first["seconds"]
    # Nothing already saved is lost: each forced run kept the finished one beside it.
    kept = sorted(p for p in tmp_path.iterdir() if p.name.startswith("prior.before-"))
    assert [(p / "output").read_text() for p in kept] == ["1", "2"]
    assert (tmp_path / "prior" / "output").read_text() == "3"


def test_failed_stage_leaves_no_marker(tmp_path):
    def broken(stage_dir: Path) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        demo.run_stage("decoder", tmp_path, set(), broken)
    assert not (tmp_path / "decoder" / demo.DONE).exists()


def test_stage_configs_are_wired_to_earlier_stages(tmp_path):
    sys.path.insert(0, str(ROOT))
    from configs import demo as demo_config

    sections = demo.stage_configs(demo_config.get_config(), tmp_path)
    assert sections["prior"].data.train_dir == str(tmp_path / "embeddings" / "train")
    assert sections["decoder"].clip_dir == str(tmp_path / "clip" / "clip")
    assert sections["prior"].model.num_tokens == sections["clip"].tokenizer.context_length
    assert sections["score_clip"].seed != sections["clip"].seed
    # The AR prior is a stage of its own, trained on the diffusion prior's embeddings.
    assert sections["ar_prior"].trainer == "ar_prior" and "ar_prior" in demo.STAGES
    assert sections["ar_prior"].data.to_dict() == sections["prior"].data.to_dict()
    assert sections["ar_prior"].model.num_tokens == sections["clip"].tokenizer.context_length
    assert sections["ar_prior"].sampling.dot_sampling == "top_half"


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


def test_interrupted_training_is_not_marked_done(tmp_path, monkeypatch):
    """A trainer that returns early (SIGTERM honoured) leaves the stage unfinished."""
    import ml_collections

    from unclip_jax.storage import checkpoints
    from unclip_jax.train import trainers

    def stops_early(config, workdir):
        (Path(workdir) / "checkpoints" / "144" / checkpoints.EMA).mkdir(parents=True)

    monkeypatch.setattr(trainers, "get_trainer", lambda name: stops_early)
    section = ml_collections.ConfigDict({"trainer": "early", "train": {"total_steps": 500}})
    with pytest.raises(demo.StageInterrupted, match="stopped at step 144 of 500"):
        demo.run_stage("clip", tmp_path, set(), demo._train(section))
    assert not (tmp_path / "clip" / demo.DONE).exists()


def test_preempted_stage_exits_143_and_is_not_marked_done(tmp_path, monkeypatch):
    """A SIGTERM honoured by a stage's trainer (`Preempted`) ends the demo with 143, the
    re-queue code, not 0 or a traceback."""
    from unclip_jax.train import checkpoints

    def preempted(config, workdir, force, only):
        demo.run_stage("prior", workdir, force, stop)

    def stop(stage_dir: Path) -> None:
        raise checkpoints.Preempted(7, stage_dir / "checkpoints")

    monkeypatch.setattr(demo, "train_all", preempted)
    monkeypatch.setattr(demo, "FLAGS", type("Flags", (), {"force": [], "stages": []})())
    with pytest.raises(SystemExit) as exit_:
        demo._train_or_exit(None, tmp_path)
    assert exit_.value.code == checkpoints.PREEMPTED_EXIT_CODE == 143
    assert not (tmp_path / "prior" / demo.DONE).exists()
