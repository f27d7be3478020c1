"""What produced a training workdir or a pipeline directory, in its `run.json`: the resolved
config, the package's git commit (and whether its checkout had uncommitted changes), the library
versions and the devices. A resumed run appends its record, so the file lists every run that
wrote there, oldest first; the directory may be local or a URI (`storage.locations`). A pipeline
directory's record holds its stages' training records ("stages"), a sampling command's output
folder the pipeline's ("pipeline"), and `unclip eval` and the demo copy them into their metrics.

    record = run_record(config)          # {"time", "command", "config", "git", "versions", ...}
    append_record(workdir, record)
"""

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
from etils import epath

from unclip_jax.storage.json_files import jsonable, read_json

RECORD_FILE = "run.json"
LIBRARIES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "ml-collections",
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-datasets",
)
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def git_state(directory: Path = PACKAGE_DIR) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None} of the checkout holding `directory`; None
    where it is no git checkout (an installed package) or git is missing."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a run's numbers depend on (absent ones left out)."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def device_record() -> dict[str, Any]:
    devices = jax.devices()
    return {
        "platform": devices[0].platform,
        "kind": devices[0].device_kind,
        "count": len(devices),
        "processes": jax.process_count(),
    }


def run_record(config: Any = None) -> dict[str, Any]:
    """The record of this process's run (`config`: a ConfigDict or mapping, or None)."""
    return {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": list(sys.argv),
        "config": jsonable(config),
        "git": git_state(),
        "versions": library_versions(),
        "devices": device_record(),
    }


def read_records(directory: str | os.PathLike) -> list[dict]:
    """The records of `directory`'s run.json, oldest first ([] where there is none)."""
    path = epath.Path(directory) / RECORD_FILE
    if not path.exists():
        return []
    runs = read_json(path).get("runs")
    if not isinstance(runs, list):
        raise ValueError(f"{path}: 'runs' must be a list of run records")
    return runs


def records_text(runs: list[dict]) -> str:
    """The contents of a run.json holding `runs`."""
    return json.dumps({"runs": runs}, indent=2, default=str)


def append_record(directory: str | os.PathLike, record: dict[str, Any]) -> None:
    """Adds `record` to `directory`'s run.json (written whole to a temporary file, then renamed,
    so a crash leaves the earlier file)."""
    path = epath.Path(directory) / RECORD_FILE
    runs = [*read_records(directory), record]
    temporary = path.with_name(f".{RECORD_FILE}.tmp")
    temporary.write_text(records_text(runs))
    temporary.replace(path)
