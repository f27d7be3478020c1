"""The experiment scripts and their results: every file under `experiments/results/` is indexed in
its README (and only those), every results path that README.md and BENCHMARKS.md name exists, and
each script imports and answers `--help` (one subprocess per script, all at once)."""

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
RESULTS = EXPERIMENTS / "results"
INDEX = RESULTS / "README.md"
DOCS = (ROOT / "README.md", ROOT / "BENCHMARKS.md")
# The scripts (`python -m experiments.<name>`); bench_common is their shared module.
SCRIPTS = sorted(p.stem for p in EXPERIMENTS.glob("*.py") if p.stem not in {"bench_common"})
# Folders written by a command rather than a script: `unclip study`'s figures per arm.
COMMAND_FOLDERS = {"paper_claims"}


def result_files() -> set[str]:
    return {
        p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*") if p.is_file() and p != INDEX
    }


def indexed_files() -> list[str]:
    """The first cell of each row of the index's table: "| `folder/file` | ... |"."""
    return re.findall(r"^\| `([^`]+)` \|", INDEX.read_text(), flags=re.MULTILINE)


def expand_braces(path: str) -> list[str]:
    """'a/{b,c}.json' -> ['a/b.json', 'a/c.json'] (shell-style, nested groups in turn)."""
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    head, tail = path[: match.start()], path[match.end() :]
    return list(
        itertools.chain.from_iterable(
            expand_braces(head + choice + tail) for choice in match[1].split(",")
        )
    )


def test_index_names_every_result_file_and_only_those():
    indexed = indexed_files()
    assert len(indexed) == len(set(indexed)), "a file is indexed twice"
    files = result_files()
    assert not files - set(indexed), f"not in {INDEX.name}: {sorted(files - set(indexed))}"
    assert not set(indexed) - files, f"indexed but absent: {sorted(set(indexed) - files)}"


def test_each_result_sits_in_its_scripts_folder():
    folders = {name.split("/")[0] for name in result_files()}
    assert all("/" in name for name in result_files()), "a result outside a script's folder"
    known = set(SCRIPTS) | COMMAND_FOLDERS
    assert folders <= known, f"folders naming no script: {sorted(folders - known)}"


def test_docs_name_only_results_that_exist():
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        paths = re.findall(r"experiments/results/[^\s`'\")]*", text)
        for path in paths:
            path = path.rstrip(".,;:")
            if "<" in path:  # a pattern such as experiments/results/<script>/
                continue
            missing += [f"{doc.name}: {p}" for p in expand_braces(path) if not (ROOT / p).exists()]
        # Results named by file alone, e.g. `prior_sweep.json`.
        for name in re.findall(r"`([\w.-]+\.(?:json|png))`", text):
            if not any(RESULTS.rglob(name)):
                missing.append(f"{doc.name}: {name}")
        assert paths, f"{doc.name} names no results path"
    assert not missing, missing


def test_scripts_import_and_answer_help():
    """Every script's `--help` exits 0 with argparse's usage; `bench_report` with its defaults
    prints the tables (so its default result names exist)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    commands = {name: ["-m", f"experiments.{name}", "--help"] for name in SCRIPTS}
    commands["bench_report defaults"] = ["-m", "experiments.bench_report"]
    runs = {
        name: subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in commands.items()
    }
    failed = {}
    for name, run in runs.items():
        stdout, stderr = run.communicate(timeout=300)
        expected = "### Sampling" if name == "bench_report defaults" else "usage:"
        if run.returncode != 0 or expected not in stdout:
            failed[name] = (run.returncode, stderr.strip().splitlines()[-3:])
    assert not failed, failed
    assert len(SCRIPTS) >= 8, SCRIPTS
