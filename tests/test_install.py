"""A sampling install, as Colab users make it: `pip install .` into a clean virtual environment
(no TensorFlow, no training extra, the oldest JAX that `setup.py` admits) samples a tiny pipeline
with `unclip generate`, and `unclip train` there names the extra it needs in one line."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def oldest_admitted(package: str) -> str:
    """The lower bound of `package` in setup.py's install_requires (e.g. "0.8.1")."""
    match = re.search(rf'"{package}>=([0-9.]+),', (ROOT / "setup.py").read_text())
    assert match, f"setup.py has no lower bound for {package}"
    return match.group(1)


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("clean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    jax = oldest_admitted("jax")
    # The repository's pins, but the oldest admitted JAX (and a Flax that runs on it, the
    # resolver's choice) where Colab's own JAX may be.
    pins = [
        line
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if not line.startswith(("jax==", "jaxlib==", "flax=="))
    ]
    constraints = venv / "constraints.txt"
    constraints.write_text("\n".join([*pins, f"jax=={jax}", f"jaxlib=={jax}"]) + "\n")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(constraints),
         str(ROOT)],
        check=True, capture_output=True, cwd=venv.parent,
    )  # fmt: skip
    return venv


def unclip(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(venv / "bin" / "unclip"), *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def test_a_clean_sampling_install_generates_without_tensorflow(clean_venv, pipeline_dir, tmp_path):
    python = str(clean_venv / "bin" / "python")
    probe = "import importlib.util as u, jax; print(u.find_spec('tensorflow'), jax.__version__)"
    found = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["None", oldest_admitted("jax")]
    out = tmp_path / "out"
    done = unclip(
        clean_venv,
        "generate",
        "a red circle",
        "--num_images=1",
        "--prior_steps=2",
        "--decoder_steps=2",
        "--upsampler_steps=2",
        f"--checkpoint={pipeline_dir}",
        f"--out={out}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "grid.png").is_file() and (out / "000_00.png").is_file()


def test_training_without_its_extra_names_the_extra(clean_venv, tmp_path):
    done = unclip(
        clean_venv,
        "train",
        f"--config={ROOT / 'configs' / 'clip_shapes.py'}:smoke",
        f"--workdir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "pip install 'unclip_jax[train]'" in done.stderr
    assert "Traceback" not in done.stderr
