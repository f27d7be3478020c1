"""`experiments/karlo_aot.py`: its `--smoke` path compiles the three Karlo chains at tiny sizes
for a local device, each with its memory figures and whole-chain roofline, and the cascade's
images/s, and `--from-hlo` gets the same figures from the saved HLO texts; `record` merges one
run's chains into the results of earlier ones; `tpu_aot`'s one-chip targets (libtpu) describe
one chip."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest

from experiments import bench_common, karlo_aot, tpu_aot

FIELDS = (
    "params",
    "compile_s",
    "bytes_per_chip",
    "argument_bytes",
    "temp_bytes",
    "hbm_bytes",
    "headroom",
    "fits_with_10pct_headroom",
    "unknown_trip_counts",
    "estimated_loop_step_s",
    "estimated_chain_s",
    "xla_estimated_chain_s",
    "floor_chain_s",
)


def test_smoke_compiles_every_chain_with_its_figures(tmp_path):
    payload = karlo_aot.run(list(karlo_aot.PROGRAMS), "v5e", batch=2, smoke=True, hlo_dir=tmp_path)
    rows = payload["programs"]
    assert sorted(rows) == sorted(karlo_aot.PROGRAMS)
    for name, row in rows.items():
        assert "error" not in row, (name, row.get("error"))
        assert all(field in row for field in FIELDS), (name, sorted(row))
        assert row["bytes_per_chip"] > 0 and row["argument_bytes"] > 0
        assert row["sampling_loops"] == 1  # the chain's traced-count loop, counted `steps` times
        assert row["estimated_chain_s"] > row["estimated_loop_step_s"] > 0
    assert {n: rows[n]["steps"] for n in rows} == {"prior": 25, "decoder": 25, "super_res": 7}
    assert rows["super_res"]["conditionals_in_loop"] == 1  # super_res_first / super_res_last
    assert payload["cascade"]["batch"] == 2
    assert payload["cascade"]["hlo_cost"]["images_per_s"] > 0
    assert payload["cascade"]["xla_cost_analysis"]["images_per_s"] > 0
    assert payload["cascade"]["all_weights_plus_largest_chain_bytes"] > 0
    # --from-hlo: the same figures again from the saved HLO texts, without compiling.
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{n}.hlo" for n in sorted(rows)]
    assert karlo_aot.reestimate(payload, tmp_path) == payload


def test_the_one_chip_targets_describe_a_single_chip():
    pytest.importorskip("libtpu", reason="describing TPU chips needs libtpu (the `tpu` extra)")
    for chip, name in karlo_aot.TARGETS.items():
        (device,) = tpu_aot.target_devices(tpu_aot.TARGETS[name])
        assert device.platform == "tpu" and chip in device.device_kind.replace(" lite", "e")


def test_record_merges_chains_of_separate_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_common, "results_dir", lambda script: tmp_path / script)
    row = dict(estimated_chain_s=1.0, xla_estimated_chain_s=0.5, floor_chain_s=0.25)
    row["argument_bytes"] = 10
    row["bytes_per_chip"] = 30
    row["fits_with_10pct_headroom"] = True
    head = dict(topology="v5e:1x1", chip="v5e", dtype="bfloat16", sizes="karlo-v1-alpha")
    for name in karlo_aot.PROGRAMS:
        programs = {name: row}
        payload = dict(head, programs=programs, cascade=karlo_aot.cascade(programs, 4))
        path = karlo_aot.record(payload)
    merged = json.loads(path.read_text())
    assert path == tmp_path / "karlo_aot" / "karlo_v5e.json"
    assert sorted(merged["programs"]) == sorted(karlo_aot.PROGRAMS)
    assert merged["cascade"]["hlo_cost"]["images_per_s"] == 4 / 3
    assert merged["cascade"]["xla_cost_analysis"]["images_per_s"] == 4 / 1.5
    assert merged["cascade"]["floor"]["images_per_s"] == 4 / 0.75
    assert merged["cascade"]["all_weights_plus_largest_chain_bytes"] == 50
