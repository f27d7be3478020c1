"""What every demo driver shares (`demo.run`: unCLIP's, `demo.dalle`: DALL·E's): stages that run
once, each leaving `<workdir>/<stage>/DONE` (its wall-clock seconds, interrupted attempts
included, and the load average), the flags that skip, force or pick them, and `main`, which
trains, exports and writes the figures.

A re-run skips a finished stage unless it is named in `--force` (or `--force=all`): a forced stage
that finished starts afresh, its previous directory kept beside it as `<stage>.before-<time>`. A
stage interrupted mid-training resumes from its last checkpoint. Exit codes as `unclip train`'s:
0 done, 1 error (one line), 143 preempted (a SIGTERM stopped a stage after saving its step:
re-queue the same command to resume).
"""

import contextlib
import dataclasses
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from unclip_jax.storage.locations import location

FLAGS = flags.FLAGS
DONE = "DONE"
# Seconds and runs of a stage's earlier attempts that were stopped (preempted or failed): a
# resumed stage's DONE reports the time of every attempt.
INTERRUPTED = "INTERRUPTED"

StageFn = Callable[[Path], None]  # runs a stage in its directory


@dataclasses.dataclass(frozen=True)
class Demo:
    """A demo driver: its stages in order (those `steps` returns), then how it exports and scores
    the pipeline."""

    steps: Callable[[ml_collections.ConfigDict, Path], dict[str, StageFn]]  # (config, workdir)
    export: Callable[[ml_collections.ConfigDict, Path], Path]  # → the pipeline directory
    # "module:function" imported on use: (config, pipeline_dir, workdir, out) → figures; writes
    # the sample grid into `out`.
    evaluate: str
    metrics_file: str = "metrics.json"  # written into `out`


def define_flags(config: str, workdir: str, outputs: str, demo_out: str = "demo") -> None:
    """The demo's flags, with a driver's defaults; defined by the entry point only: importing a
    driver (tests) leaves the process-wide registry to `unclip train`, which defines `--config`
    and `--workdir` too (where several are imported, as `unclip train-folder`, `unclip study` and
    `unclip train` in one process, the later definition stands)."""
    config_flags.DEFINE_config_file(
        "config", config, "The demo configuration.", allow_override=True
    )
    flags.DEFINE_string(
        "workdir", workdir, "Directory for data, stage workdirs, pipeline.", allow_override=True
    )
    flags.DEFINE_string("demo_out", demo_out, f"Directory for {outputs}.", allow_override=True)
    flags.DEFINE_list(
        "force",
        [],
        "Stages to re-run even when finished ('all' for every stage).",
        allow_override=True,
    )
    flags.DEFINE_list(
        "stages",
        [],
        "Run only these stages (e.g. in a second process); sampling waits for all.",
        allow_override=True,
    )


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (this machine is shared; timings depend on it)."""
    return [round(x, 2) for x in os.getloadavg()]


def earlier_attempts(path: Path) -> dict:
    """{"seconds", "runs"} of a stage's stopped attempts from its INTERRUPTED record; none where
    there is no record or it cannot be read (a write cut short by a full disk)."""
    try:
        record = json.loads(path.read_text())
        return {"seconds": float(record["seconds"]), "runs": int(record["runs"])}
    except (OSError, ValueError, KeyError, TypeError):
        if path.exists():
            logging.warning("%s unreadable: the earlier attempts' seconds are not counted", path)
        return {"seconds": 0.0, "runs": 0}


def run_stage(name: str, workdir: Path, force: set[str], fn: StageFn) -> dict:
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
    interrupted = stage_dir / INTERRUPTED
    earlier = earlier_attempts(interrupted)
    logging.info("stage %s: running", name)
    start = time.time()
    try:
        fn(stage_dir)
    except BaseException:  # preempted or failed: its time so far counts when it resumes
        seconds = earlier["seconds"] + time.time() - start
        with contextlib.suppress(OSError):  # a full disk must not hide the stage's own error
            interrupted.write_text(
                json.dumps({"seconds": round(seconds, 1), "runs": earlier["runs"] + 1})
            )
        raise
    seconds = earlier["seconds"] + time.time() - start
    record = {"seconds": round(seconds, 1), "load_average": load_average()}
    if earlier["runs"]:
        record["interrupted_runs"] = earlier["runs"]
    interrupted.unlink(missing_ok=True)
    marker.write_text(json.dumps(record))
    logging.info(
        "stage %s: done in %.0f s (load %s)", name, record["seconds"], record["load_average"]
    )
    return {**record, "skipped": False}


def run_stages(
    steps: Mapping[str, StageFn], workdir: Path, force: set[str], only: set[str]
) -> dict[str, dict]:
    """Runs (or skips) every stage of `steps` in order, or only those in `only` when it is not
    empty; returns the records of the finished stages."""
    records = {}
    for name, step in steps.items():
        if only and name not in only:
            marker = workdir / name / DONE
            if marker.is_file():
                records[name] = {**json.loads(marker.read_text()), "skipped": True}
            continue
        records[name] = run_stage(name, workdir, force, step)
    return records


class StageInterrupted(RuntimeError):
    """A trainer returned before its last step (a SIGTERM was honoured); re-run to resume."""


def section(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """A copy of the demo config's stage section `name`, reading the demo's TFDS directory."""
    copy = ml_collections.ConfigDict(config[name].to_dict())
    if "data" in copy and "data_dir" in copy.data:
        copy.data.data_dir = config.data_dir or None
    return copy


def trained(stage: ml_collections.ConfigDict) -> StageFn:
    """Runs the stage's registered trainer; StageInterrupted unless it reached its last step."""
    from unclip_jax.storage import checkpoints
    from unclip_jax.train import trainers

    def train(stage_dir: Path) -> None:
        trainers.get_trainer(stage.trainer)(stage, str(stage_dir))
        step = int(checkpoints.resolve_step_dir(stage_dir / "checkpoints").name)
        if step != stage.train.total_steps:
            raise StageInterrupted(
                f"{stage_dir.name} stopped at step {step} of {stage.train.total_steps}; "
                "run the demo again to resume it"
            )

    return train


def embedded(clip_dir: Path, data: ml_collections.ConfigDict, splits: Mapping[str, str]) -> StageFn:
    """`unclip embed` with the CLIP at `clip_dir` (token states kept, float32) of each split of
    the `data` section's source into `<stage>/<name>` for each `name: split` of `splits`: the
    priors' embedding shards."""

    def embed(stage_dir: Path) -> None:
        from unclip_jax.data.sources import open_source
        from unclip_jax.train.clip_embeddings import embed_source

        for name, split in splits.items():
            source = open_source(
                data.source,
                split,
                data.get("data_dir"),
                data.image_size,
                data.get("validation_fraction", 0.0),
            )
            embed_source(clip_dir, source, stage_dir / name, token_states=True, dtype="float32")

    return embed


def clip_dir(workdir: Path) -> Path:
    """The CLIP (converted layout and tokenizer) that the "clip" stage leaves for the later
    stages."""
    from unclip_jax.train import clip_task

    return workdir / "clip" / clip_task.EXPORT_DIR


def export_unclip(
    workdir: Path, sections: Mapping[str, ml_collections.ConfigDict], clip: Path
) -> Path:
    """The unCLIP stages of `sections` trained in `<workdir>/<stage>` (prior, decoder, upsampler,
    and the AR prior where there is one), with the CLIP at `clip`, as `<workdir>/pipeline`."""
    from unclip_jax.pipelines.store import export_pipeline

    def trained_in(name: str) -> tuple[ml_collections.ConfigDict, Path]:
        return sections[name], workdir / name

    return export_pipeline(
        workdir / "pipeline",
        clip_dir=clip,
        prior=trained_in("prior"),
        decoder=trained_in("decoder"),
        upsamplers=[trained_in("upsampler")],
        ar_prior=trained_in("ar_prior") if "ar_prior" in sections else None,
    )


def shapes_data(config: ml_collections.ConfigDict) -> StageFn:
    """Builds (or reopens) the demo's captioned shapes, `config.data_source`, in TFDS's
    `config.data_dir` (its default where empty)."""

    def build(stage_dir: Path) -> None:
        from unclip_jax.data import shapes_captions

        del stage_dir
        shapes_captions.build(config.data_source.split("/", 1)[1], config.data_dir or None)

    return build


def train_or_exit(train: Callable[[], dict]) -> dict:
    """`train()`; a preemption exits with 143, a bad input or fault with one line and 1."""
    from unclip_jax.train.checkpoints import PREEMPTED_EXIT_CODE, Preempted

    try:
        return train()
    except Preempted as preempted:
        print(f"demo: {preempted}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    except (OSError, ValueError, FloatingPointError) as error:
        print(f"demo: error: {error}", file=sys.stderr)
        sys.exit(1)


def check_stage_names(names: set[str], stages: tuple[str, ...]) -> None:
    """ValueError naming the stages of --force/--stages that the demo does not have."""
    unknown = (names - {"all"}) - set(stages)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)} in --force/--stages; stages: {stages}")


def evaluator(name: str) -> Callable[..., dict]:
    """The function of a "module:function" name."""
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


def main(demo: Demo, argv: list[str]) -> None:
    """Trains (or skips) the stages, then, once all are finished, exports the pipeline, scores
    it and writes `<demo_out>/<metrics_file>` with each stage's record and the load average."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from unclip_jax.pipelines.outputs import check_output_dir, enable_compilation_cache
    from unclip_jax.storage import run_record

    config = FLAGS.config
    workdir = location(FLAGS.workdir)  # a local path or a bucket URI
    out = check_output_dir(FLAGS.demo_out)
    force, only = set(FLAGS.force), set(FLAGS.stages)
    steps = demo.steps(config, workdir)
    check_stage_names(force | only, tuple(steps))
    enable_compilation_cache(str(workdir / "xla_cache"))
    start = time.time()
    records = train_or_exit(lambda: run_stages(steps, workdir, force, only))
    missing = [name for name in steps if name not in records]
    if missing:
        print(f"stages not finished yet: {', '.join(missing)}; sampling runs once all are")
        return
    pipeline_dir = demo.export(config, workdir)
    figures = evaluator(demo.evaluate)(config, pipeline_dir, workdir, out)
    figures["stages"] = records
    figures["training_seconds"] = round(sum(r["seconds"] for r in records.values()), 1)
    figures["total_seconds_this_run"] = round(time.time() - start, 1)
    figures["load_average_at_end"] = load_average()
    figures["run"] = {
        "demo": run_record.run_record(config),
        "pipeline": run_record.read_records(pipeline_dir),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / demo.metrics_file).write_text(json.dumps(figures, indent=2, allow_nan=False))
    print(json.dumps({k: v for k, v in figures.items() if k not in ("stages", "run")}, indent=2))


def launch(demo: Demo, config: str, workdir: str) -> None:
    """The command line of a driver (`python -m ...`): its flags with these defaults, then
    `main` with the libraries' INFO lines kept out of the console and in the workdir's log."""
    from unclip_jax import console

    define_flags(config, workdir, f"the sample grid and {demo.metrics_file}")

    def quiet_main(argv: list[str]) -> None:
        console.configure(FLAGS.log_level)
        with console.log_file(location(FLAGS.workdir) / console.LOG_FILE):
            main(demo, argv)

    app.run(quiet_main)
