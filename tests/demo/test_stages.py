"""The demos' stage machinery: finished stages are skipped unless forced, a failed or interrupted
stage is not marked done, a preemption exits with 143, and unknown stage names are refused."""

import time
from pathlib import Path

import ml_collections
import pytest

from unclip_jax.demo import stages


def test_finished_stages_are_skipped_unless_forced(tmp_path):
    calls = []

    def stage(stage_dir: Path) -> None:
        calls.append(stage_dir.name)
        # A forced stage starts in an empty directory (a finished checkpoint would be resumed).
        assert not (stage_dir / "output").exists()
        (stage_dir / "output").write_text(str(len(calls)))

    first = stages.run_stage("prior", tmp_path, set(), stage)
    again = stages.run_stage("prior", tmp_path, set(), stage)
    forced = stages.run_stage("prior", tmp_path, {"prior"}, stage)
    time.sleep(1.1)  # the kept directories are named by the second
    every = stages.run_stage("prior", tmp_path, {"all"}, stage)
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
        stages.run_stage("decoder", tmp_path, set(), broken)
    assert not (tmp_path / "decoder" / stages.DONE).exists()


def test_a_resumed_stage_reports_the_time_of_every_attempt(tmp_path):
    attempts = []

    def preempted_once(stage_dir: Path) -> None:
        attempts.append(stage_dir.name)
        time.sleep(0.3)
        if len(attempts) == 1:
            raise SystemExit(143)

    with pytest.raises(SystemExit):
        stages.run_stage("dalle", tmp_path, set(), preempted_once)
    record = stages.run_stage("dalle", tmp_path, set(), preempted_once)
    assert record["seconds"] >= 0.6  # both attempts', not the last one's 0.3
    assert record["interrupted_runs"] == 1
    assert not (tmp_path / "dalle" / stages.INTERRUPTED).exists()


def test_an_unreadable_record_of_earlier_attempts_does_not_stop_a_resume(tmp_path):
    (tmp_path / "dvae").mkdir()
    (tmp_path / "dvae" / stages.INTERRUPTED).write_text("")  # cut short by a full disk
    record = stages.run_stage("dvae", tmp_path, set(), lambda stage_dir: None)
    assert "interrupted_runs" not in record and (tmp_path / "dvae" / stages.DONE).is_file()


def test_only_named_stages_run_and_finished_ones_are_reported(tmp_path):
    ran = []
    steps = {name: lambda d: ran.append(d.name) for name in ("data", "clip", "dvae")}
    stages.run_stages(steps, tmp_path, set(), {"data"})
    records = stages.run_stages(steps, tmp_path, set(), {"clip"})
    assert ran == ["data", "clip"]
    assert list(records) == ["data", "clip"] and records["data"]["skipped"]
    with pytest.raises(ValueError, match=r"unknown stages \['decoder'\]"):
        stages.check_stage_names({"all", "decoder"}, tuple(steps))


def test_interrupted_training_is_not_marked_done(tmp_path, monkeypatch):
    """A trainer that returns early (SIGTERM honoured) leaves the stage unfinished."""
    from unclip_jax.storage import checkpoints
    from unclip_jax.train import trainers

    def stops_early(config, workdir):
        (Path(workdir) / "checkpoints" / "144" / checkpoints.EMA).mkdir(parents=True)

    monkeypatch.setattr(trainers, "get_trainer", lambda name: stops_early)
    section = ml_collections.ConfigDict({"trainer": "early", "train": {"total_steps": 500}})
    with pytest.raises(stages.StageInterrupted, match="stopped at step 144 of 500"):
        stages.run_stage("clip", tmp_path, set(), stages.trained(section))
    assert not (tmp_path / "clip" / stages.DONE).exists()


def test_preempted_stage_exits_143_and_is_not_marked_done(tmp_path):
    """A SIGTERM honoured by a stage's trainer (`Preempted`) ends the demo with 143, the
    re-queue code, not 0 or a traceback."""
    from unclip_jax.train import checkpoints

    def stop(stage_dir: Path) -> None:
        raise checkpoints.Preempted(7, stage_dir / "checkpoints")

    with pytest.raises(SystemExit) as exit_:
        stages.train_or_exit(lambda: stages.run_stages({"prior": stop}, tmp_path, set(), set()))
    assert exit_.value.code == checkpoints.PREEMPTED_EXIT_CODE == 143
    assert not (tmp_path / "prior" / stages.DONE).exists()
