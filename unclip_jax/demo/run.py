"""The main job: build the shapes set, train CLIP → priors → decoder → upsampler, sample, score.

    python -m unclip_jax.demo --config configs/demo.py --workdir workdirs/demo --demo_out demo

Stages run in order through the registered trainers (`train/trainers.py`); each one that
finishes leaves `<workdir>/<stage>/DONE` (its wall-clock seconds), and a re-run skips it unless
named in `--force` (or `--force=all`): a forced stage that finished starts afresh, its previous
directory kept beside it as `<stage>.before-<time>`. A stage interrupted mid-training resumes from
its last checkpoint. Then the stages are assembled into `<workdir>/pipeline` (`UnCLIP.load`-able,
with both priors: the diffusion prior by default, the autoregressive one with `prior="ar"`) and
the figures are written: `<out>/samples.png` (one row per prompt of `config.grid_prompts`) and
`<out>/metrics.json` (oracle accuracy, binding, CLIP score, diversity, variations,
interpolations, text diffs, stage times and the machine's load).

Exit codes as `unclip train`'s: 0 done, 1 error (one line), 143 preempted (a SIGTERM stopped a
stage after saving its step: re-queue the same command to resume).
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The demo's flags, defined by `__main__` only: importing this module (tests) leaves the
    process-wide registry to `unclip train`, which defines `--config` and `--workdir` too."""
    config_flags.DEFINE_config_file("config", "configs/demo.py", "The demo configuration.")
    flags.DEFINE_string("workdir", "workdirs/demo", "Directory for data, stage workdirs, pipeline.")
    flags.DEFINE_string("demo_out", "demo", "Directory for samples.png and metrics.json.")
    flags.DEFINE_list("force", [], "Stages to re-run even when finished ('all' for every stage).")
    flags.DEFINE_list(
        "stages", [], "Run only these stages (e.g. in a second process); sampling waits for all."
    )


DONE = "DONE"
STAGES = ("data", "clip", "score_clip", "embeddings", "prior", "ar_prior", "decoder", "upsampler")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (this machine is shared; timings depend on it)."""
    return [round(x, 2) for x in os.getloadavg()]


def run_stage(name: str, workdir: Path, force: set[str], fn: Callable[[Path], None]) -> dict:
    """Runs fn(<workdir>/<name>) unless its DONE marker exists and the stage is not forced;
    returns the stage's record {"seconds", "load_average", "skipped"}."""
    stage_dir = workdir / name
    marker = stage_dir / DONE
    if marker.is_file() and not ({name, "all"} & force):
        record = json.loads(marker.read_text())
        logging.info("stage %s: finished before (%.0f s), skipped", name, record["seconds"])
        return {**record, "skipped": True}
    if marker.is_file():  # forced: a fresh run, the finished one kept
        kept = stage_dir.with_name(f"{name}.before-{time.strftime('%Y%m%d-%H%M%S')}")
        stage_dir.rename(kept)
        logging.info("stage %s: forced; the finished run is kept in %s", name, kept)
    stage_dir.mkdir(parents=True, exist_ok=True)
    logging.info("stage %s: running", name)
    start = time.time()
    fn(stage_dir)
    record = {"seconds": round(time.time() - start, 1), "load_average": load_average()}
    marker.write_text(json.dumps(record))
    logging.info(
        "stage %s: done in %.0f s (load %s)", name, record["seconds"], record["load_average"]
    )
    return {**record, "skipped": False}


class StageInterrupted(RuntimeError):
    """A trainer returned before its last step (a SIGTERM was honoured); re-run to resume."""


def _train(section: ml_collections.ConfigDict) -> Callable[[Path], None]:
    """Runs the stage's registered trainer; StageInterrupted unless it reached its last step."""
    from unclip_jax.storage import checkpoints
    from unclip_jax.train import trainers

    def train(stage_dir: Path) -> None:
        trainers.get_trainer(section.trainer)(section, str(stage_dir))
        step = int(checkpoints.resolve_step_dir(stage_dir / "checkpoints").name)
        if step != section.train.total_steps:
            raise StageInterrupted(
                f"{stage_dir.name} stopped at step {step} of {section.train.total_steps}; "
                "run the demo again to resume it"
            )

    return train


def _embed(config: ml_collections.ConfigDict, workdir: Path) -> Callable[[Path], None]:
    """`unclip embed` of the train and test splits with the conditioning CLIP (token states)."""

    def embed(stage_dir: Path) -> None:
        for split in ("train", "test"):
            command = [
                sys.executable, "-m", "unclip_jax.cli", "embed",
                "--config=configs/clip_shapes.py",
                f"--config.data.source={config.data_source}",
                f"--checkpoint={workdir / 'clip' / 'clip'}",
                f"--out={stage_dir / split}",
                f"--split={split}",
                "--token_states",
                "--dtype=float32",
            ]  # fmt: skip
            if config.data_dir:
                command.append(f"--config.data.data_dir={config.data_dir}")
            subprocess.run(command, check=True)

    return embed


def stage_configs(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Each trained stage's config, wired to the outputs of the stages before it."""
    data_dir = config.data_dir or None
    sections = {}
    for name in ("clip", "score_clip", "prior", "ar_prior", "decoder", "upsampler"):
        section = ml_collections.ConfigDict(config[name].to_dict())
        if "data" in section and "data_dir" in section.data:
            section.data.data_dir = data_dir
        sections[name] = section
    for prior in ("prior", "ar_prior"):  # both read the conditioning CLIP's embeddings
        sections[prior].data.train_dir = str(workdir / "embeddings" / "train")
        sections[prior].data.eval_dir = str(workdir / "embeddings" / "test")
    sections["decoder"].clip_dir = str(workdir / "clip" / "clip")
    return sections


def train_all(
    config: ml_collections.ConfigDict, workdir: Path, force: set[str], only: set[str]
) -> dict:
    """Runs (or skips) every stage, or only those in `only` when it is not empty; returns the
    records of the finished stages."""
    from unclip_jax.data import shapes_captions

    sections = stage_configs(config, workdir)
    builder_config = config.data_source.split("/", 1)[1]
    steps: dict[str, Callable[[Path], None]] = {
        "data": lambda _: shapes_captions.build(builder_config, config.data_dir or None),
        "clip": _train(sections["clip"]),
        "score_clip": _train(sections["score_clip"]),
        "embeddings": _embed(config, workdir),
        "prior": _train(sections["prior"]),
        "ar_prior": _train(sections["ar_prior"]),
        "decoder": _train(sections["decoder"]),
        "upsampler": _train(sections["upsampler"]),
    }
    records = {}
    for name in STAGES:
        if only and name not in only:
            marker = workdir / name / DONE
            if marker.is_file():
                records[name] = {**json.loads(marker.read_text()), "skipped": True}
            continue
        records[name] = run_stage(name, workdir, force, steps[name])
    return records


def export(config: ml_collections.ConfigDict, workdir: Path) -> Path:
    from unclip_jax.pipelines.store import export_pipeline

    sections = stage_configs(config, workdir)
    return export_pipeline(
        workdir / "pipeline",
        clip_dir=workdir / "clip" / "clip",
        prior=(sections["prior"], workdir / "prior"),
        decoder=(sections["decoder"], workdir / "decoder"),
        upsamplers=[(sections["upsampler"], workdir / "upsampler")],
        ar_prior=(sections["ar_prior"], workdir / "ar_prior"),
    )


def _train_or_exit(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """`train_all`; a preemption exits with 143, a bad input or fault with one line and 1."""
    from unclip_jax.train.checkpoints import PREEMPTED_EXIT_CODE, Preempted

    try:
        return train_all(config, workdir, set(FLAGS.force), set(FLAGS.stages))
    except Preempted as preempted:
        print(f"demo: {preempted}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    except (OSError, ValueError, FloatingPointError) as error:
        print(f"demo: error: {error}", file=sys.stderr)
        sys.exit(1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from unclip_jax.demo import evaluate as demo_eval
    from unclip_jax.pipelines.outputs import check_output_dir, enable_compilation_cache
    from unclip_jax.storage import run_record

    config = FLAGS.config
    workdir = Path(FLAGS.workdir).absolute()
    out = check_output_dir(FLAGS.demo_out)
    unknown = ((set(FLAGS.force) - {"all"}) | set(FLAGS.stages)) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)} in --force/--stages; stages: {STAGES}")
    enable_compilation_cache(str(workdir / "xla_cache"))
    start = time.time()
    records = _train_or_exit(config, workdir)
    missing = [name for name in STAGES if name not in records]
    if missing:
        print(f"stages not finished yet: {', '.join(missing)}; sampling runs once all are")
        return
    pipeline_dir = export(config, workdir)
    figures = demo_eval.evaluate(config, pipeline_dir, workdir, out)
    figures["stages"] = records
    figures["training_seconds"] = round(sum(r["seconds"] for r in records.values()), 1)
    figures["total_seconds_this_run"] = round(time.time() - start, 1)
    figures["load_average_at_end"] = load_average()
    figures["run"] = {
        "demo": run_record.run_record(config),
        "pipeline": run_record.read_records(pipeline_dir),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(figures, indent=2, allow_nan=False))
    print(json.dumps({k: v for k, v in figures.items() if k not in ("stages", "run")}, indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(main)
