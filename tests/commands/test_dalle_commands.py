"""`unclip generate` and `unclip complete` with a DALL·E pipeline directory: the kind read from
the manifest, images written at once, the flags of the other kind of pipeline refused by name,
and a damaged directory named in one line; every refusal exits 1 (2 for usage), prints no
traceback and writes nothing."""

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1]))
import tiny_dalle
from reliability.io_helpers import io_assert_refused


def _refused(result: tuple[int, str, str], out: Path, *words: str, code: int = 1) -> str:
    """The one error line of a refused call naming each of `words`, after checking its exit code
    and that nothing was written."""
    line = io_assert_refused(result, code, *words)
    assert not out.exists() or not any(out.iterdir())
    return line


def test_generate_reads_the_kind_and_reranks(unclip, dalle_dir, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = unclip(
        "generate",
        "a red circle",
        "a blue square " * 4,
        "--num_images=2",
        "--rerank=2",
        "--temperature=0.9",
        "--top_k=8",
        f"--checkpoint={dalle_dir}",
        f"--out={out}",
    )
    assert code == 0, err[-2000:]
    assert "caption truncated" in err and "wrote 4 images" in stdout
    captions = json.loads((out / "captions.json").read_text())
    assert sorted(captions) == ["000_00.png", "000_01.png", "001_00.png", "001_01.png"]
    for name in captions:
        assert np.asarray(Image.open(out / name)).shape == (8, 8, 3)
    assert np.asarray(Image.open(out / "grid.png")).shape[0] == 2 * 10
    assert json.loads((out / "run.json").read_text())["runs"]


@pytest.mark.parametrize(
    "flag", ["--prior_steps=2", "--prior=ar", "--decoder_guidance=2", "--upsampler_steps=3"]
)
def test_generate_refuses_unclip_flags_with_a_dalle_pipeline(unclip, dalle_dir, tmp_path, flag):
    out = tmp_path / "out"
    result = unclip("generate", "a red circle", flag, f"--checkpoint={dalle_dir}", f"--out={out}")
    name = flag.split("=")[0]
    _refused(result, out, f"{name}: not a setting of a DALL·E pipeline", str(dalle_dir))


def test_generate_refuses_dalle_flags_with_an_unclip_pipeline(unclip, pipeline_dir, tmp_path):
    out = tmp_path / "out"
    result = unclip(
        "generate", "a red circle", "--top_p=0.5", f"--checkpoint={pipeline_dir}", f"--out={out}"
    )
    _refused(result, out, "--top_p: not a setting of an unCLIP pipeline")


def test_complete_keeps_the_top_rows(unclip, dalle_dir, tmp_path):
    source = tmp_path / "source.png"
    Image.fromarray(tiny_dalle.source_image()).save(source)
    out = tmp_path / "out"
    code, stdout, err = unclip(
        "complete",
        str(source),
        "--prompt=a red circle",
        "--keep_rows=1",
        "--num_images=2",
        f"--checkpoint={dalle_dir}",
        f"--out={out}",
    )
    assert code == 0, err[-2000:]
    assert "wrote 2 completions" in stdout
    captions = json.loads((out / "captions.json").read_text())
    assert captions == {"completion_000.png": "a red circle", "completion_001.png": "a red circle"}
    for name in captions:
        assert np.asarray(Image.open(out / name)).shape == (8, 8, 3)
    assert np.asarray(Image.open(out / "grid.png")).shape[0] == 10


@pytest.mark.parametrize(
    "args, words, code",
    [
        (["--keep_rows=4"], ["keep_rows must be in [0, 4)", "got 4"], 1),
        (["--keep_rows=-1"], ["keep_rows must be in [0, 4)", "got -1"], 1),
        (["--keep_rows=1", "--decoder_steps=3"], ["--decoder_steps: not a setting of a DALL·E"], 1),
        (["--keep_rows=1", "--temperature=0"], ["--temperature must be > 0, got 0.0"], 1),
        (["--keep_rows=1", "--rerank=0"], ["--rerank must be an integer >= 1, got 0"], 1),
        ([], ["missing required flag(s): --keep_rows"], 2),
    ],
)
def test_complete_refuses_bad_input(unclip, dalle_dir, tmp_path, args, words, code):
    source = tmp_path / "source.png"
    Image.fromarray(tiny_dalle.source_image()).save(source)
    out = tmp_path / "out"
    result = unclip(
        "complete", str(source), "--prompt=a red circle", *args, f"--checkpoint={dalle_dir}",
        f"--out={out}",
    )  # fmt: skip
    _refused(result, out, *words, code=code)


def test_complete_refuses_an_unclip_pipeline(unclip, pipeline_dir, tmp_path):
    source = tmp_path / "source.png"
    Image.fromarray(tiny_dalle.source_image()).save(source)
    out = tmp_path / "out"
    result = unclip(
        "complete", str(source), "--prompt=a red circle", "--keep_rows=1",
        f"--checkpoint={pipeline_dir}", f"--out={out}",
    )  # fmt: skip
    _refused(result, out, "draws with a DALL·E pipeline", "holds an unCLIP one")


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    value = json.loads(path.read_text())
    edit(value)
    path.write_text(json.dumps(value))


def _garble(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0garbage")


STAGE = Path("transformer") / "stage.json"
# name -> (damage(directory), the words the one-line error must hold)
DAMAGES = {
    "manifest kind unknown": (
        lambda d: (d / "unclip.json").write_text('{"format": 1, "kind": "imagen"}'),
        ["unclip.json", "kind must be one of", "'imagen'"],
    ),
    "dVAE encoder missing": (
        lambda d: shutil.rmtree(d / "dvae" / "encoder"),
        ["missing stage 'dvae'", "dvae/encoder"],
    ),
    "tokenizer missing": (
        lambda d: shutil.rmtree(d / "transformer" / "tokenizer"),
        ["missing stage 'transformer'", "transformer/tokenizer/unclip_tokenizer.json"],
    ),
    "stage.json not JSON": (
        lambda d: (d / STAGE).write_bytes(b"\xff{"),
        [str(STAGE), "not valid JSON"],
    ),
    "stage.json lacks sampling": (
        lambda d: _edit_json(d / STAGE, lambda s: s.pop("sampling")),
        [str(STAGE), "missing 'sampling'"],
    ),
    "model field misspelt": (
        lambda d: _edit_json(d / STAGE, lambda s: s["model"].update(widht=16)),
        [str(STAGE), "widht"],
    ),
    "model width does not fit the parameters": (
        lambda d: _edit_json(d / STAGE, lambda s: s["model"].update(width=32)),
        ["transformer", "do not fit the model of its stage.json"],
    ),
    "sampling temperature zero": (
        lambda d: _edit_json(d / STAGE, lambda s: s["sampling"].update(temperature=0)),
        [str(STAGE), "temperature must be a finite number > 0"],
    ),
    "tokenizer of another length": (
        lambda d: _edit_json(
            d / "transformer" / "tokenizer" / "unclip_tokenizer.json",
            lambda s: s.update(context_length=6),
        ),
        [str(STAGE), "the tokenizer has", "and 6 positions", "reads"],
    ),
    "dVAE config of another vocabulary": (
        lambda d: _edit_json(d / "dvae" / "dvae_config.json", lambda s: s.update(vocab_size=32)),
        ["dvae_config.json expects shape", "dvae"],
    ),
    "transformer parameters corrupt": (
        lambda d: _garble(d / "transformer" / "params"),
        ["cannot read the checkpoint at", "transformer/params"],
    ),
}


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_a_damaged_dalle_directory_is_named_in_one_line(unclip, dalle_dir, tmp_path, name):
    damage, words = DAMAGES[name]
    directory = tmp_path / "dalle"
    shutil.copytree(dalle_dir, directory)
    damage(directory)
    out = tmp_path / "out"
    result = unclip("generate", "a red circle", f"--checkpoint={directory}", f"--out={out}")
    _refused(result, out, *words)
