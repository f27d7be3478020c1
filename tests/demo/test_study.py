"""`unclip study`: its stages wired per CLIP and seed, the claims judged by their written rules
(on made-up figures whose verdicts are known), pipelines exported again after a stage is, and
the smoke tier end to end through the command: every arm's figure file, the table, the plot,
and a re-run that samples nothing again."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unclip_jax.demo import stages, study, study_claims, study_stages

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT))
from configs import study as study_config  # noqa: E402


def test_stages_are_wired_per_clip_and_seed(tmp_path):
    config = study_config.get_config("full")
    sections = study_stages.sections(config, tmp_path)
    assert sections["prior_c1_s2"].data.train_dir == str(tmp_path / "embeddings_c1" / "train")
    assert sections["prior_c1_s2"].seed == 2 and sections["ar_prior_c1_s2"].seed == 2
    assert sections["clip_c1"].seed == 1 != sections["score_clip"].seed
    assert sections["decoder_c1"].clip_dir == str(study_stages.clip_export(tmp_path, 1))
    # D is A's U-Net and budget trained without image embeddings.
    a, d = sections["decoder_c0"], sections["glide_decoder_c0"]
    assert a.model.to_dict() == d.model.to_dict() and a.train.to_dict() == d.train.to_dict()
    assert a.model.caption_source == "transformer" and a.image_size == 32
    assert (a.guidance.image_drop_prob, d.guidance.image_drop_prob) == (0.1, 1.0)
    # D's decoders read no embedding of their CLIP: each replicate is trained from its own seed.
    assert sections["glide_decoder_c1"].seed != d.seed
    steps = list(study_stages.steps(config, tmp_path))
    assert steps[:4] == ["data", "score_clip", "dvae", "dalle"]
    assert len(steps) == 4 + 2 * (4 + 2 * 3)
    assert sections["dalle"].dvae_dir == str(tmp_path / "dvae" / "dvae")
    assert study.replicates(config, config.arms["A"]) == [(c, s) for c in (0, 1) for s in (0, 1, 2)]
    assert study.replicates(config, config.arms["D"]) == [(0, 0), (1, 0)]
    assert config.reference_guidance in config.guidance_scales


def test_a_stage_trained_again_resamples_the_arms_that_read_it():
    config = study_config.get_config("full")
    assert study.arms_reading(config, {"dalle"}) == {"E"}
    assert study.arms_reading(config, {"decoder_c1"}) == {"A", "B", "C1", "C2"}
    assert study.arms_reading(config, {"glide_decoder_c0"}) == {"D"}
    assert study.arms_reading(config, {"ar_prior_c1_s2"}) == {"B"}
    assert study.arms_reading(config, {"clip_c1"}) == set(config.arms)
    assert study.arms_reading(config, {"score_clip"}) == set(config.arms)
    assert study.arms_reading(config, set()) == set()


def test_each_arm_waits_only_for_the_stages_it_reads(tmp_path):
    """An arm is trained for on its own (a later session resumes the study from the committed
    arms): DALL·E's reads no decoder, unCLIP's no GLIDE decoder, the prior-less arms the prior
    their pipeline holds and no other."""
    config = study_config.get_config("full")

    def needed(name: str) -> set[str]:
        arm = config.arms[name].to_dict()
        return study_stages.needed_stages(config, arm, study.replicates(config, arm))

    every = {"data", "score_clip"}
    clips = {f"{kind}_c{c}" for kind in ("clip", "embeddings") for c in (0, 1)}
    assert needed("E") == every | {"dvae", "dalle", "clip_c0", "clip_c1"}
    priors = {f"prior_c{c}_s{s}" for c in (0, 1) for s in (0, 1, 2)}
    decoders = {"decoder_c0", "decoder_c1"}
    assert needed("A") == every | clips | priors | decoders
    assert needed("B") == every | clips | {f"ar_{p}" for p in priors} | decoders
    first_priors = {"prior_c0_s0", "prior_c1_s0"}
    assert needed("C1") == needed("C2") == every | clips | first_priors | decoders
    assert needed("D") == every | clips | first_priors | {"glide_decoder_c0", "glide_decoder_c1"}
    assert set().union(*map(needed, config.arms)) == set(study_stages.steps(config, tmp_path))

    def pipeline(name: str, c: int = 1, s: int = 0) -> Path:
        return study_stages.arm_pipeline(tmp_path, config.arms[name].to_dict(), c, s)

    assert pipeline("A") == pipeline("C1") == pipeline("C2") != pipeline("B")
    assert len({pipeline("A"), pipeline("B"), pipeline("D"), pipeline("E"), pipeline("A", 0)}) == 5


def made_up_arm(colour_shape: float, diversity: float, fd: float, scales=("4",)) -> dict:
    """An arm's figure file with 2 seeds × 64 captions around the given means."""
    rng = np.random.default_rng(int(1000 * colour_shape + 100 * diversity))
    per_scale = {}
    for k, key in enumerate(scales):
        shift = 0.1 * k  # larger guidance: more fidelity, less diversity
        per_scale[key] = {
            "colour": (rng.random((2, 64)) < colour_shape + shift).astype(float),
            "colour_shape": (rng.random((2, 64)) < colour_shape + shift).astype(float),
            "binding": (rng.random((2, 64)) < colour_shape).astype(float),
            "clip_score": rng.normal(20 + 10 * colour_shape, 1.0, (2, 64)),
            "diversity": rng.normal(diversity - shift, 0.02, (2, 64)),
            "fd": rng.normal(fd, 0.05, (2, 201)),
        }
    return {"guidance": per_scale}


def test_claims_follow_their_rules():
    claims = study_config.claims()
    arms = {
        "A": made_up_arm(0.6, 0.5, 1.0, scales=("1", "4")),
        "B": made_up_arm(0.3, 0.5, 2.0),
        "C2": made_up_arm(0.4, 0.5, 1.5),
        "C1": made_up_arm(0.1, 0.5, 3.0),
    }
    arms["A"]["variations"] = {
        "variation_kept": np.full((2, 8), 0.9),
        "variation_layouts": np.full((2, 8), 0.7),
    }
    curve = {1: 0.1, 8: 0.35, 16: 0.38, 32: 0.4}  # DALL·E's reranking: gains flatten
    arms["E"] = made_up_arm(0.2, 0.5, 2.0)
    arms["E"]["rerank"] = {
        str(n): made_up_arm(p, 0.5, 2.0)["guidance"]["4"] for n, p in curve.items()
    }
    arms["A"]["training_flops"] = [{"prior": 2e15, "decoder": 8e15}] * 2
    arms["E"]["training_flops"] = [{"dalle": 9e15}]
    judged = {c["name"]: c for c in study_claims.judge(claims, arms, 4.0, 500)}
    assert judged["reranking_flattens"]["verdict"] == "reproduced"
    assert judged["unclip_vs_dalle"]["verdict"] == "reproduced"
    assert judged["unclip_vs_dalle"]["compute_check"]["ratio"] == pytest.approx(10 / 9)
    # better figures at 1.5× the compute (or uncounted compute) decide nothing
    arms["E"]["training_flops"] = [{"dalle": 10e15 / 1.5}]
    judged = {c["name"]: c for c in study_claims.judge(claims, arms, 4.0, 500)}
    assert judged["unclip_vs_dalle"]["verdict"] == "inconclusive"
    del arms["E"]["training_flops"]
    judged = {c["name"]: c for c in study_claims.judge(claims, arms, 4.0, 500)}
    assert judged["unclip_vs_dalle"]["compute_check"]["comparable"] is False
    assert "not counted" in "".join(study_claims.claims_table(list(judged.values())))
    del arms["E"]
    judged = {c["name"]: c for c in study_claims.judge(claims, arms, 4.0, 500)}
    assert judged["prior_matters"]["verdict"] == "reproduced"
    assert judged["diffusion_prior_vs_ar"]["verdict"] == "reproduced"
    assert judged["variations"]["verdict"] == "reproduced"
    # D has no figures yet: the claims that need it wait for it.
    assert judged["binding"]["verdict"] == "pending"
    assert judged["binding"]["missing_arms"] == ["D"]
    # A reversed: the AR prior far ahead.
    arms["B"] = made_up_arm(0.9, 0.5, 0.5)
    judged = {c["name"]: c for c in study_claims.judge(claims, arms, 4.0, 500)}
    assert judged["diffusion_prior_vs_ar"]["verdict"] == "not reproduced"
    rows = study_claims.claims_table(list(judged.values()))
    assert len(rows) == 2 + len(claims) and "not run yet" in "".join(rows)


def test_guidance_claim_compares_diversity_at_equal_fidelity():
    """A is taken at its lowest scale at least as faithful as D's most faithful point; where
    none is, the comparison is inconclusive."""
    claims = [c for c in study_config.claims() if c["name"] == "guidance_trade_off"]
    # made_up_arm: each larger scale +0.1 colour + shape and −0.1 diversity
    a = made_up_arm(0.4, 0.6, 1.0, scales=("1", "2", "4"))  # 0.4, 0.5, 0.6
    d = made_up_arm(0.35, 0.3, 1.0, scales=("1", "4"))  # D@4: 0.45 colour + shape
    (judged,) = study_claims.judge(claims, {"A": a, "D": d}, 4.0, 500)
    matched = judged["comparisons"][2]
    assert matched["first"] == "A@2" and matched["difference"] == pytest.approx(0.3, abs=0.02)
    assert judged["verdict"] == "reproduced"
    # D more faithful than A at every scale: nothing to compare at equal fidelity
    d = made_up_arm(0.75, 0.3, 1.0, scales=("1", "4"))
    (judged,) = study_claims.judge(claims, {"A": a, "D": d}, 4.0, 500)
    assert judged["comparisons"][2]["interval"] is None and judged["verdict"] == "inconclusive"
    assert "no scale of A reaches its colour_shape" in "".join(study_claims.claims_table([judged]))


def run_study(workdir: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "unclip_jax.cli", "study", f"--workdir={workdir}", *flags]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_smoke_study_writes_every_arm_and_the_claims(tmp_path):
    config = study_config.get_config("smoke")
    first = run_study(tmp_path, "--config=configs/study.py:smoke", "--arms=C1,E")
    results = tmp_path / "paper_claims"
    assert sorted(p.name for p in results.iterdir()) == ["C1.json", "E.json"]
    assert "arms without figures yet: A, B, C2, D" in first.stdout
    partial = (tmp_path / "paper_claims.md").read_text()
    assert "Arms without figures yet: A, B, C2, D." in partial and "| C1 | 4 |" in partial
    trained = {p.name for p in tmp_path.iterdir() if (p / stages.DONE).is_file()}
    assert "dalle" in trained and "decoder_c0" in trained
    assert not trained & {"glide_decoder_c0", "ar_prior_c0_s0"}  # D's and B's, not sampled yet
    run = run_study(tmp_path, "--config=configs/study.py:smoke")
    assert "arm C1:" not in run.stdout and "arm A:" in run.stdout
    for name, arm in config.arms.items():
        figures = json.loads((results / f"{name}.json").read_text())
        replicates = len(config.seeds) if arm.seeded else 1
        assert len(figures["replicates"]) == replicates
        assert len(figures["training_seconds"]) == replicates
        assert all(t > 0 for stages in figures["training_seconds"] for t in stages.values())
        trained = [set(stages) for stages in figures["training_flops"]]
        assert [
            set(s) - {f"embeddings_c{c}" for c in (0,)} for s in figures["training_seconds"]
        ] == trained
        assert all(f > 0 for stages in figures["training_flops"] for f in stages.values())
        assert len(figures["guidance"]) == (2 if arm.guided else 1)
        sampled = figures["sampling_flops_per_image"]
        assert sorted(sampled) == sorted(figures["guidance"])
        assert all(len(v) == replicates and min(v) > 0 for v in sampled.values())
        for one in figures["guidance"].values():
            assert np.shape(one["colour_shape"]) == (replicates, config.eval.num_single)
            assert np.shape(one["binding"]) == (replicates, config.eval.num_pair)
            assert np.shape(one["fd"]) == (replicates, 201)
    claims = {c["name"]: c for c in json.loads((results / "claims.json").read_text())["claims"]}
    dalle = json.loads((results / "E.json").read_text())
    assert sorted(dalle["rerank"], key=int) == [str(n) for n in config.rerank_curve]
    assert dalle["guidance"]["4"] == dalle["rerank"]["1"]
    per_n = dalle["rerank_sampling_flops_per_image"]
    np.testing.assert_allclose(per_n["32"], np.multiply(32, per_n["1"]))
    # the prior's programs are part of A's sampling, not of C1's (the decoder's null z_i)
    a, c1 = (json.loads((results / f"{n}.json").read_text()) for n in ("A", "C1"))
    assert a["sampling_flops_per_image"]["4"][0] > c1["sampling_flops_per_image"]["4"][0]
    assert {c["verdict"] for c in claims.values()} <= {
        "reproduced",
        "not reproduced",
        "inconclusive",
    }
    assert (results / "guidance.png").is_file() and (results / "rerank.png").is_file()
    table = (tmp_path / "paper_claims.md").read_text()
    assert all(name in table for name in claims)
    assert "binding:" in run.stdout
    # a stage trained before FLOPs were counted is reopened for them and takes no step
    compute = tmp_path / "prior_c0_s0" / "compute.json"
    counted = json.loads(compute.read_text())
    compute.unlink()
    checkpoints = sorted(p.name for p in (tmp_path / "prior_c0_s0" / "checkpoints").iterdir())
    again = run_study(tmp_path, "--config=configs/study.py:smoke", "--force_arms=C1")
    assert "arm C1:" in again.stdout and "arm A:" not in again.stdout  # C1's pipeline holds it
    assert "not sampled again" in again.stderr + (tmp_path / "run.log").read_text()
    assert json.loads(compute.read_text()) == counted
    assert (
        sorted(p.name for p in (tmp_path / "prior_c0_s0" / "checkpoints").iterdir()) == checkpoints
    )


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config=configs/study.py:tiny", "must be one of ['smoke', 'fast', 'full']"),
        ("--force=nothing", "unknown stages ['nothing']"),
        ("--force_arms=Z", "unknown arms ['Z'] in --force_arms"),
        ("--arms=A,F", "unknown arms ['F'] in --arms"),
    ],
)
def test_bad_input_is_one_line(tmp_path, flag, message):
    command = [sys.executable, "-m", "unclip_jax.cli", "study", f"--workdir={tmp_path}", flag]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and message in run.stderr and "Traceback" not in run.stderr


def test_a_pipeline_is_exported_again_once_a_stage_it_reads_is_trained_again(tmp_path):
    exported = []

    def export(out: Path) -> None:
        out.mkdir(parents=True)
        exported.append((out / "weights").write_text(str(len(exported))))

    for name in ("dvae", "dalle"):
        (tmp_path / name).mkdir()
        (tmp_path / name / stages.DONE).write_text('{"seconds": 1.0}')
    out = tmp_path / "pipelines" / "dalle_c0"
    study_stages._export_once(out, tmp_path, ["dvae", "dalle"], export)
    study_stages._export_once(out, tmp_path, ["dvae", "dalle"], export)
    assert len(exported) == 1  # unchanged stages: the pipeline is kept
    (tmp_path / "dalle" / stages.DONE).write_text('{"seconds": 2.0}')  # `--force=dalle`
    study_stages._export_once(out, tmp_path, ["dvae", "dalle"], export)
    assert len(exported) == 2 and (out / "weights").read_text() == "1"
