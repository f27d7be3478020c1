"""run.json: what produced a directory — config, commit and dirtiness, versions, devices — with
every run appended and a corrupt file named rather than overwritten."""

import json
import subprocess

import ml_collections
import pytest

from unclip_jax.storage import run_record


def test_a_record_names_the_config_commit_versions_and_devices():
    config = ml_collections.ConfigDict({"seed": 3, "shape": (1, 2)})
    record = run_record.run_record(config)
    assert record["config"] == {"seed": 3, "shape": [1, 2]}
    assert {"python", "jax", "flax", "numpy"} <= set(record["versions"])
    assert record["devices"]["platform"] == "cpu" and record["devices"]["count"] >= 1
    json.dumps(record)  # plain JSON


def test_git_state_reads_the_commit_and_a_dirty_tree(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    assert run_record.git_state(tmp_path) == {"commit": None, "dirty": None}
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    clean = run_record.git_state(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert run_record.git_state(tmp_path) == {"commit": clean["commit"], "dirty": True}


def test_records_are_appended_and_a_corrupt_file_is_named_and_kept(tmp_path):
    run_record.append_record(tmp_path, {"n": 1})
    run_record.append_record(tmp_path, {"n": 2})
    assert run_record.read_records(tmp_path) == [{"n": 1}, {"n": 2}]
    path = tmp_path / run_record.RECORD_FILE
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"run\.json is not valid JSON"):
        run_record.append_record(tmp_path, {"n": 3})
    assert path.read_text() == "{not json"
