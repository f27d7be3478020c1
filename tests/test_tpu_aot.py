"""experiments/tpu_aot.py on this machine's devices: the configs' CPU-size train steps compile,
their HLO text is saved, and a results file is re-estimated from that text without compiling."""

import json

import pytest

from experiments import bench_common, tpu_aot


def test_saved_hlo_re_estimates_the_results_file(tmp_path, monkeypatch):
    hlo = tmp_path / "hlo" / "tpu_aot_prior_v5e-1.hlo"
    row = tpu_aot.compile_train_step("prior", "local", "smoke", hlo_path=hlo)
    assert row["bytes_per_chip"] > 0 and "estimated_step_s" not in row  # local: no roofline
    assert "HloModule" in hlo.read_text()

    # The same row as if compiled for one v5e chip, with a stale, impossible estimate.
    monkeypatch.setattr(bench_common, "results_dir", lambda script: tmp_path / script)
    results = tmp_path / "tpu_aot" / "tpu_aot_prior_v5e-1.json"
    results.parent.mkdir()
    results.write_text(json.dumps(dict(row, target="v5e-1", estimated_step_s=-0.44)))
    assert tpu_aot.reestimate("tpu_aot_prior_v5e-1", hlo.parent)
    updated = json.loads(results.read_text())
    assert updated["estimated_step_s"] > 0 and 0 < updated["estimated_utilisation"] <= 1
    assert updated["bytes_per_chip"] == row["bytes_per_chip"]  # memory stays as compiled
    assert not tpu_aot.reestimate("tpu_aot_prior_v5p-128", hlo.parent)  # no such HLO text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--targets", "v9-1"], "--targets must name entries of"),
        (["--stages", "vae"], "--stages must name entries of"),
        (["--mesh", "data=x"], "mesh must be axis=size pairs"),
    ],
)
def test_bad_arguments_end_in_one_usage_line(argv, message, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["tpu_aot", *argv])
    with pytest.raises(SystemExit) as exit_info:
        tpu_aot.main()
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
