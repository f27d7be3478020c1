"""`unclip convert-dvae`: both file formats end to end, the pickle flag, and bad input as one line
(exit 1) or a usage error (exit 2), never a traceback."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dall_e = pytest.importorskip("dall_e")

from unclip_jax.convert import dvae as convert  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unclip_jax.cli", "convert-dvae", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, pathlib.Path]:
    torch.manual_seed(1)
    encoder = dall_e.Encoder(n_hid=64, vocab_size=512, requires_grad=False)
    decoder = dall_e.Decoder(n_init=32, n_hid=64, vocab_size=512)
    root = tmp_path_factory.mktemp("dall_e")
    paths = {
        name: root / name for name in ("encoder.pt", "decoder.pt", "encoder.pkl", "decoder.pkl")
    }
    torch.save(encoder.state_dict(), paths["encoder.pt"])
    torch.save(decoder.state_dict(), paths["decoder.pt"])
    torch.save(encoder, paths["encoder.pkl"])
    torch.save(decoder, paths["decoder.pkl"])
    return paths


def test_pickles_convert_with_the_flag_and_equal_the_state_dict_conversion(files, tmp_path):
    result = run_cli(
        f"--encoder={files['encoder.pkl']}",
        f"--decoder={files['decoder.pkl']}",
        f"--out={tmp_path / 'from_pickle'}",
        "--allow_pickle",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "encoder 2,585,504, decoder 2,693,766 parameters" in result.stdout
    config, from_pickle = convert.load_dvae(tmp_path / "from_pickle")
    expected_config, expected = convert.load_openai_dvae(files["encoder.pt"], files["decoder.pt"])
    assert config == expected_config
    for half in convert.HALVES:
        ours, theirs = from_pickle[half]["params"], expected[half]["params"]
        for key in ("input", "output"):
            np.testing.assert_array_equal(ours[key]["kernel"], theirs[key]["kernel"])


def test_pickle_without_the_flag_is_refused_in_one_line(files, tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        f"--encoder={files['encoder.pt']}", f"--decoder={files['decoder.pkl']}", f"--out={out}"
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "decoder.pkl is a whole-module pickle" in lines[0] and "--allow_pickle" in lines[0]
    assert not out.exists()


def test_help_says_that_unpickling_runs_code():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--allow_pickle" in result.stdout and "runs" in result.stdout


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["--encoder=E"], 2, "missing required flag(s): --decoder, --out"),
        (["--encoder=E", "--decoder=D", "--out=O", "extra"], 2, "unexpected arguments: extra"),
        (["--encoder={corrupt}", "--decoder={decoder}", "--out={out}"], 1, "corrupt or truncated"),
        (["--encoder={missing}", "--decoder={decoder}", "--out={out}"], 1, "no dVAE weight file"),
        (["--encoder={encoder}", "--decoder={decoder}", "--out={taken}"], 1, "not overwriting"),
    ],
    ids=["missing-flags", "positional", "corrupt", "missing-file", "out-taken"],
)
def test_bad_input_is_one_line(files, tmp_path, args, code, text):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(files["encoder.pt"].read_bytes()[:4000])
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    values = dict(
        corrupt=corrupt,
        missing=tmp_path / "nowhere.pt",
        encoder=files["encoder.pt"],
        decoder=files["decoder.pt"],
        out=tmp_path / "out",
        taken=taken,
    )
    result = run_cli(*(arg.format(**values) for arg in args))
    assert result.returncode == code, result.stderr[-2000:]
    assert text in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (taken / "keep.txt").read_text() == "mine"
