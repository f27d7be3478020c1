"""`unclip study --config configs/study.py:fast`: the papers' comparisons on the shapes, one
command — every stage trained (or reused), every arm sampled on the same held-out captions and
scored, each arm's figures written to `<results>/<arm>.json`, the claims judged by the config's
rules into `<table>` (Markdown) with `<results>/claims.json` and the plots `guidance.png`
(fidelity against diversity) and `rerank.png` (DALL·E's reranking curve) beside it.

The study goes arm by arm (in the config's order, or those named in `--arms`): it trains the
stages an arm reads, skipping those finished and resuming those interrupted (`--force`,
`--stages`, exit codes 0, 1 and 143 as `unclip train`'s), then samples and scores the arm and
writes its file. An arm whose file exists is not trained for nor sampled again unless named in
`--force_arms` or reading a stage named in `--force`, so a run stopped half-way goes on from its
last finished arm, and results committed from an earlier run carry over (on another machine,
only the missing arms' stages are trained). Until every arm has its file, the table holds the
figures of those that have; then the claims are judged.
Run from the repository's root.
"""

import functools
import json
import time
from pathlib import Path

import ml_collections
import numpy as np
from absl import app, flags, logging

from unclip_jax import console, flop_meter
from unclip_jax.demo import stages, study_arms, study_claims, study_stages
from unclip_jax.storage.locations import location

FLAGS = flags.FLAGS
stages.define_flags("configs/study.py", "workdirs/study", "the figures", demo_out="")
flags.DEFINE_list("force_arms", [], "Arms to sample again although their figures exist ('all').")
flags.DEFINE_list("arms", [], "Arms to train for and sample in this run (default: every arm).")


def outputs(config: ml_collections.ConfigDict, workdir: Path) -> tuple[Path, Path]:
    """(results folder, table file): the config's, or inside the workdir where they are ""."""
    results = Path(config.results) if config.results else workdir / "paper_claims"
    table = Path(config.table) if config.table else workdir / "paper_claims.md"
    return results, table


def replicates(config: ml_collections.ConfigDict, arm: dict) -> list[tuple[int, int]]:
    """(CLIP, seed) pairs an arm is sampled for: every seed where it is seeded, else the first."""
    seeds = config.seeds if arm["seeded"] else config.seeds[:1]
    return [(c, s) for c in config.clip_seeds for s in seeds]


def arms_reading(config: ml_collections.ConfigDict, stages_: set[str]) -> set[str]:
    """The arms whose samples come from one of the named stages: those of its replicates
    (`study_stages.arm_stages`), and every arm for "all", the data or the score CLIP."""
    if stages_ & {"all", "data", "score_clip"}:
        return set(config.arms)
    return {
        name
        for name, arm in config.arms.items()
        for c, s in replicates(config, arm)
        if stages_ & set(study_stages.arm_stages(arm, c, s))
    }


def sample_options(config: ml_collections.ConfigDict, arm: dict) -> dict:
    """The generate options of an arm: the decoder's steps and the diffusion prior's settings
    where they run (DALL·E's are its pipeline's)."""
    s = config.sampling
    if arm["pipeline"] == "dalle":
        return {}
    options = {"decoder_steps": s.decoder_steps}
    if arm["prior"] == "diffusion":
        options.update(
            prior_steps=s.prior_steps,
            prior_guidance=s.prior_guidance,
            prior_candidates=s.prior_candidates,
        )
    return options


def samplers(config, directory: Path, arm: dict, refs: study_arms.References):
    """(pipeline, {figure key: generate}) of an arm from its pipeline at `directory`: one key per
    guidance scale (unCLIP's arms) or per N of the reranking curve (DALL·E's, keys "#N")."""
    if arm["pipeline"] == "dalle":
        from unclip_jax.pipelines.dalle import Dalle

        pipe = Dalle.load(directory, progress=True)
        draws = study_arms.RerankedDraws(pipe, max(config.rerank_curve))
        return pipe, {f"#{n}": draws.best_of(n) for n in config.rerank_curve}
    from unclip_jax.pipelines.unclip import UnCLIP

    pipe = UnCLIP.load(directory, prior=arm["prior"] or "diffusion", progress=True)
    text_norm = 0.0  # the held-out images' mean ‖z_i‖, for z_t in place of z_i
    if arm["embedding"] == "text":
        z_i = pipe.encode_images([d["image"] for d in refs.data[:256]])
        text_norm = float(np.linalg.norm(z_i, axis=-1).mean())
    generate = study_arms.arm_generate(arm["embedding"], pipe, text_norm)
    scales = config.guidance_scales if arm["guided"] else (config.reference_guidance,)
    return pipe, {f"{g:g}": functools.partial(generate, guidance=g) for g in scales}


def evaluate_arm(config, workdir: Path, name: str, refs: study_arms.References) -> dict:
    """An arm's figures (`study_arms`) for each replicate and guidance scale (or N)."""
    arm = config.arms[name].to_dict()
    figures: dict = {}
    variations: dict = {}
    sampled: dict = {}  # figure key -> per replicate, the FLOPs its sampling ran
    training = []
    start = time.time()
    for c, s in replicates(config, arm):
        stage_names = study_stages.arm_stages(arm, c, s)
        training.append(study_stages.training_seconds(workdir, stage_names))
        pipe, generators = samplers(
            config, study_stages.export_arm(config, workdir, arm, c, s), arm, refs
        )
        for key, generate in generators.items():
            logging.info("arm %s, CLIP %d, seed %d, %s", name, c, s, key)
            with flop_meter.metering() as meter:
                one = study_arms.sample_figures(
                    generate,
                    refs,
                    config.sampling.seed,
                    config.eval.images_per_caption,
                    sample_options(config, arm),
                )
            sampled.setdefault(key, []).append(meter.flops)
            for figure, value in one.items():
                figures.setdefault(key, {}).setdefault(figure, []).append(value)
        if name == "A":
            e = config.eval
            one = study_arms.variation_figures(
                pipe, refs, e.num_variation_sources, e.variations_per_source, config.sampling.seed
            )
            for key, value in one.items():
                variations.setdefault(key, []).append(value)
    out = {
        "arm": name,
        **arm,
        "tier": config.tier,
        "replicates": replicates(config, arm),
        "fd_floor": refs.fd_floor,
        "sampling": config.sampling.to_dict(),
        "eval": config.eval.to_dict(),
        "training_seconds": training,  # per replicate, each stage's (on this machine)
        "training_flops": arm_flops(config, workdir, name),  # per replicate, each stage's
        "seconds": round(time.time() - start, 1),
        "load_average": stages.load_average(),
    }
    images = len(refs.single) * config.eval.images_per_caption + len(refs.pairs)
    most = max(config.rerank_curve) if arm["pipeline"] == "dalle" else None
    per_image = sampling_flops_per_image(sampled, images, most)
    if arm["pipeline"] == "dalle":  # N = 1 stands at the reference guidance
        out["rerank"] = {key[1:]: value for key, value in figures.items()}
        out["rerank_sampling_flops_per_image"] = {key[1:]: v for key, v in per_image.items()}
        figures = {f"{config.reference_guidance:g}": out["rerank"]["1"]}
        per_image = {f"{config.reference_guidance:g}": per_image["#1"]}
    out["guidance"] = figures
    out["sampling_flops_per_image"] = per_image
    if variations:
        out["variations"] = variations
    return out


def sampling_flops_per_image(
    sampled: dict[str, list[float]], images: int, dalle_most: int | None
) -> dict[str, list[float]]:
    """Per figure key and replicate, the FLOPs per image of the programs the arm's sampling ran
    (`flop_meter`: the pipeline's; scoring is not counted). DALL·E draws `dalle_most` candidates
    per image once, under its first key: the best of N costs N of those candidates."""
    if dalle_most is None:
        return {key: [flops / images for flops in runs] for key, runs in sampled.items()}
    per_candidate = np.sum(list(sampled.values()), axis=0) / (images * dalle_most)
    return {key: (int(key[1:]) * per_candidate).tolist() for key in sampled}


def write_json(path: Path, value: dict) -> None:
    """`value` at `path` through a temporary sibling: a stopped run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1, allow_nan=False) + "\n")
    partial.replace(path)


def arm_flops(config, workdir: Path, name: str) -> list[dict]:
    """Per replicate of arm `name`, its trained stages' FLOPs."""
    arm = config.arms[name].to_dict()
    return [
        study_stages.training_flops(config, workdir, study_stages.arm_stages(arm, c, s))
        for c, s in replicates(config, arm)
    ]


def figures_on_file(config: ml_collections.ConfigDict, path: Path) -> dict | None:
    """The figures this tier wrote to `path` before, or None (none, or another tier's: those are
    replaced)."""
    if not path.is_file():
        return None
    earlier = json.loads(path.read_text())
    if earlier.get("tier") != config.tier:
        logging.info("arm %s: %s holds the %s tier's figures", path.stem, path, earlier.get("tier"))
        return None
    logging.info("arm %s: figures in %s, not sampled again", path.stem, path)
    return earlier


def run_arms(config, workdir: Path, chosen: list[str], force: set[str], resample: set[str]):
    """The figures of every arm that has them: read where this tier wrote them before (unless
    in `resample`), else, for the `chosen` arms, sampled once the stages they read are trained;
    each stage of `force` is trained again once."""
    from unclip_jax.evals.clip_score import CLIPScorer

    steps = study_stages.steps(config, workdir)
    force = set(steps) if "all" in force else set(force)
    results, _ = outputs(config, workdir)
    refs = None
    arms = {}
    for name in config.arms:
        path = results / f"{name}.json"
        earlier = None if {name, "all"} & resample else figures_on_file(config, path)
        if earlier is not None:
            arms[name] = earlier
        if earlier is not None or name not in chosen:
            continue
        arm = config.arms[name].to_dict()
        needed = study_stages.needed_stages(config, arm, replicates(config, arm))
        arm_steps = {stage: step for stage, step in steps.items() if stage in needed}
        train = functools.partial(stages.run_stages, arm_steps, workdir, force & needed, set())
        stages.train_or_exit(train)
        force -= needed
        study_stages.count_flops(config, workdir, needed)
        if refs is None:
            refs = study_arms.References(config, CLIPScorer(study_stages.score_clip_dir(workdir)))
        arms[name] = evaluate_arm(config, workdir, name, refs)
        write_json(path, arms[name])
        print(f"arm {name}: {arms[name]['seconds']:.0f} s, figures in {path}", flush=True)
    return arms


def report(config, arms: dict[str, dict], results: Path, table: Path) -> list[dict]:
    """`table`: the arms' figures, and once every arm has them the judged claims (also into
    `<results>/claims.json`, with the plots beside it); returns the judged claims ([] while an
    arm is missing)."""
    replicates_ = config.bootstrap_replicates
    missing = [name for name in config.arms if name not in arms]
    lines = [f"# The papers' claims on the shapes ({config.tier} tier)", ""]
    judged = []
    if missing:
        lines.append(
            f"Arms without figures yet: {', '.join(missing)}. The claims are judged once every "
            "arm has them."
        )
    else:
        judged = study_claims.judge(
            list(config.claims), arms, config.reference_guidance, replicates_
        )
        write_json(results / "claims.json", {"tier": config.tier, "claims": judged})
        study_claims.guidance_plot(arms, results / "guidance.png")
        study_claims.rerank_plot(arms, results / "rerank.png")
        lines.extend(study_claims.claims_table(judged))
    lines += ["", "## Arms", "", *study_claims.arms_table(arms, replicates_), ""]
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text("\n".join(lines))
    return judged


def check_arm_names(config: ml_collections.ConfigDict, flag: str, names: list[str]) -> None:
    """ValueError naming the arms of `flag` that the study does not have."""
    unknown = set(names) - {"all", *config.arms}
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)} in --{flag}; arms: {list(config.arms)}")


def study(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Arm by arm, trains (or skips) the stages it reads, then samples and scores it; judges the
    claims once every arm has its figures."""
    from unclip_jax.pipelines.outputs import enable_compilation_cache

    force, only = set(FLAGS.force), set(FLAGS.stages)
    steps = study_stages.steps(config, workdir)
    stages.check_stage_names(force | only, tuple(steps))
    check_arm_names(config, "force_arms", FLAGS.force_arms)
    check_arm_names(config, "arms", FLAGS.arms)
    enable_compilation_cache(str(workdir / "xla_cache"))
    if only:  # e.g. in a second process: the stages alone, no arm sampled
        stages.train_or_exit(lambda: stages.run_stages(steps, workdir, force, only))
        print(f"stages {', '.join(sorted(only))} trained; a run without --stages samples the arms")
        return
    chosen = list(config.arms) if {"all"} >= set(FLAGS.arms) else FLAGS.arms
    # a stage trained again makes the figures of the arms that read it stale
    resample = set(FLAGS.force_arms) | arms_reading(config, force)
    arms = run_arms(config, workdir, chosen, force, resample)
    results, table = outputs(config, workdir)
    judged = report(config, arms, results, table)
    for claim in judged:
        print(f"{claim['name']}: {claim['verdict']}")
    missing = [name for name in config.arms if name not in arms]
    if missing:
        print(f"arms without figures yet: {', '.join(missing)}; the claims wait for every arm")
    print(f"{'claims' if judged else 'the arms so far'} in {table}, figures in {results}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    workdir = location(FLAGS.workdir)
    with console.log_file(workdir / console.LOG_FILE):
        study(FLAGS.config, workdir)
