"""What the sampling subcommands share: their flags and checks, loading the pipeline (of the
kind its directory holds: unCLIP's or DALL·E's), and grids of a source image beside its results
(the output directory and the compilation cache are `pipelines.outputs`'s, which the demo uses
too).

`--out` and `--checkpoint` also name other subcommands' flags; they are defined with
`allow_override` so that any set of subcommand modules can be imported together.
"""

import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from unclip_jax.commands.usage import check_usage

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "checkpoint",
    None,
    "Pipeline directory (unclip.json and every stage) or converted Karlo checkpoint.",
    allow_override=True,
)
flags.DEFINE_string(
    "out",
    None,
    "Output directory for the images: new or empty unless --overwrite.",
    allow_override=True,
)
flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace what --out holds: its earlier files are removed once the new ones are written.",
)
MAX_SEED = 2**32 - 1  # JAX's keys keep 32 bits of the seed (x64 off): larger seeds would repeat
flags.DEFINE_integer("seed", 0, "Random seed.", lower_bound=0, upper_bound=MAX_SEED)
flags.DEFINE_integer("decoder_steps", None, "Decoder sampling steps (default: the stage's).")
flags.DEFINE_integer("upsampler_steps", None, "Upsampler sampling steps (default: the stage's).")
flags.DEFINE_float(
    "decoder_guidance", None, "Decoder classifier-free guidance scale (>= 0; default: the stage's)."
)
flags.DEFINE_integer("num_devices", None, "Local devices to shard the batch over (default: all).")
flags.DEFINE_enum(
    "dtype",
    None,
    ["float32", "bfloat16"],
    "What the models compute in and hold their parameters in (bfloat16: half the memory, faster "
    "on GPUs and TPUs; the sampling chains stay float32; default: as the pipeline was saved).",
)
# The flags of the commands that decode from a chosen x_T (variations, interpolate): defined
# here once, listed only by those commands, which declare them key flags (IMAGE_OPERATION_FLAGS).
_IMAGE_OPERATIONS = f"{__name__}.image_operations"
flags.DEFINE_float(
    "eta",
    None,
    "DDIM η of the decoder (>= 0; 0: deterministic, larger: more varied; default: variations "
    "1.0 from an inverted x_T and 0 from a random one, interpolate 0).",
    lower_bound=0.0,
    module_name=_IMAGE_OPERATIONS,
)
flags.DEFINE_enum(
    "x_T",
    "inverted",
    ["inverted", "random"],
    "The decoder's starting latent: 'inverted', the DDIM inversion of the image(s) (§3.1–3.2; "
    "at --eta=0 it reproduces them); 'random', a Gaussian draw (variations: one per variation; "
    "interpolate: one for all frames).",
    module_name=_IMAGE_OPERATIONS,
)
IMAGE_OPERATION_FLAGS = ("eta", "x_T")
# The flags of the commands that draw images for a caption (generate, complete), likewise.
_SAMPLING = f"{__name__}.sampling"
flags.DEFINE_integer(
    "num_images",
    4,
    "Images per prompt (complete: completions of the image).",
    module_name=_SAMPLING,
)
flags.DEFINE_integer(
    "rerank",
    1,
    "Candidates drawn per image; the one of the largest CLIP score is kept.",
    module_name=_SAMPLING,
)
flags.DEFINE_float(
    "temperature",
    None,
    "DALL·E pipelines: temperature of the codes' distribution (> 0; default: the pipeline's).",
    module_name=_SAMPLING,
)
flags.DEFINE_integer(
    "top_k",
    None,
    "DALL·E pipelines: draw each code among the k likeliest (0: off; default: the pipeline's).",
    module_name=_SAMPLING,
)
flags.DEFINE_float(
    "top_p",
    None,
    "DALL·E pipelines: nucleus sampling's mass (in (0, 1]; default: the pipeline's).",
    module_name=_SAMPLING,
)
SAMPLING_FLAGS = ("num_images", "rerank", "temperature", "top_k", "top_p")
DALLE_FLAGS = ("temperature", "top_k", "top_p")  # settings of DALL·E pipelines alone
DECODER_FLAGS = ("decoder_steps", "upsampler_steps", "decoder_guidance")  # unCLIP's alone


def adopt_flags(
    module_name: str, image_operation: bool = False, sampling: bool = False, unclip: bool = True
) -> None:
    """List this module's flags in the help of the command `module_name` as its own: with
    `image_operation` also --eta and --x_T, with `sampling` also SAMPLING_FLAGS, and without
    `unclip` (a DALL·E command) none of the unCLIP decoder's."""
    names = [f.name for f in flags.FLAGS.get_key_flags_for_module(__name__)]
    names = [name for name in names if unclip or name not in DECODER_FLAGS]
    names += [
        *(IMAGE_OPERATION_FLAGS if image_operation else ()),
        *(SAMPLING_FLAGS if sampling else ()),
    ]
    for name in names:
        flags.FLAGS.register_key_flag_for_module(module_name, flags.FLAGS[name])


flags.DEFINE_string(
    "compilation_cache",
    str(Path.home() / ".cache" / "unclip_jax" / "xla"),
    "Persistent JAX compilation cache directory ('' turns it off).",
)


def checkpoint_kind() -> str:
    """The kind of pipeline `--checkpoint` holds, from its manifest: "unclip" (a converted Karlo
    checkpoint too) or "dalle"; errors name the directory or the file."""
    if not FLAGS.checkpoint:
        raise ValueError("--checkpoint must name a pipeline directory")
    from unclip_jax.pipelines import karlo, store

    if karlo.is_karlo_checkpoint(FLAGS.checkpoint):
        return store.UNCLIP_KIND
    return store.pipeline_kind(FLAGS.checkpoint)


def refuse_flags(names: Sequence[str], kind: str) -> None:
    """ValueError naming the flags of `names` given on the command line, which the `kind` of
    pipeline of `--checkpoint` does not take."""
    from unclip_jax.pipelines.store import KIND_NAMES

    given = [f"--{name}" for name in names if FLAGS[name].present]
    if given:
        raise ValueError(
            f"{', '.join(given)}: not a setting of {KIND_NAMES[kind]} pipeline, which "
            f"--checkpoint {FLAGS.checkpoint!r} holds"
        )


def load_pipeline(checkpoint: str | None, kind: str = "unclip", **load_options: Any):
    """The pipeline of `--checkpoint` of `kind` ("unclip": `UnCLIP`, "dalle": `Dalle`), with
    progress bars; `load_options` are more keywords of its `load` (e.g. UnCLIP's `prior=`)."""
    if not checkpoint:
        raise ValueError("--checkpoint must name a pipeline directory")
    if kind == "dalle":
        from unclip_jax.pipelines.dalle import Dalle as pipeline
    else:
        from unclip_jax.pipelines.unclip import UnCLIP as pipeline
    return pipeline.load(
        checkpoint, num_devices=FLAGS.num_devices, dtype=FLAGS.dtype, progress=True, **load_options
    )


def open_output() -> Path:
    """The checked `--out` directory, the compilation cache turned on: what every sampling
    command does once its own flags are checked, before loading anything."""
    from unclip_jax.pipelines import outputs

    out = outputs.check_output_dir(FLAGS.out, overwrite=FLAGS.overwrite)
    outputs.enable_compilation_cache(FLAGS.compilation_cache)
    return out


def open_run(**load_options: Any) -> tuple[Path, Any]:
    """(`open_output()`, the UnCLIP of `--checkpoint` loaded with `load_options`)."""
    out = open_output()
    return out, load_pipeline(FLAGS.checkpoint, **load_options)


@contextlib.contextmanager
def warnings_printed(command: str) -> Iterator[None]:
    """Warnings of the block (a caption cut to the tokenizer's context, ...) printed once each
    to stderr as `unclip COMMAND: warning: ...` when it ends."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"unclip {command}: warning: {message}", file=sys.stderr)


def write_results(out: Path, files: dict[str, Any]) -> None:
    """All files of a run into `out` at once, with the run's record (run.json: the command, the
    versions and the records of the --checkpoint pipeline); with --overwrite they replace what
    it held."""
    from unclip_jax.pipelines import outputs
    from unclip_jax.storage import run_record

    record = {**run_record.run_record(), "pipeline": run_record.read_records(FLAGS.checkpoint)}
    files = {**files, run_record.RECORD_FILE: run_record.records_text([record])}
    outputs.write_outputs(out, files, replace=FLAGS.overwrite)


def decoder_options() -> dict[str, Any]:
    """The decoder and upsampler flags as `UnCLIP`'s `DecoderOptions`."""
    return {name: FLAGS[name].value for name in DECODER_FLAGS}


def dalle_options() -> dict[str, Any]:
    """--temperature, --top_k and --top_p as keywords of `Dalle.generate` / `complete`."""
    return {name: FLAGS[name].value for name in DALLE_FLAGS}


def x_T_options() -> dict[str, Any]:
    """--x_T and --eta (when given) as keywords of `variations` / `interpolate`."""
    options = {"x_T": FLAGS.x_T}
    if FLAGS.eta is not None:
        options["eta"] = FLAGS.eta
    return options


def image_files(prefix: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """{"<prefix>_<i>.png": image} for uint8 images [N, H, W, 3]."""
    return {f"{prefix}_{i:03d}.png": image for i, image in enumerate(images)}


def read_images(
    argv: list[str], count: int, usage: str, required: Sequence[str] = ()
) -> list[np.ndarray]:
    """The `count` images named by the positional arguments (uint8 [H, W, 3] each), read and the
    shared sampling flags (and the `required` ones' presence) checked before anything is
    loaded."""
    from unclip_jax.pipelines.images import load_image

    paths = check_usage(argv, *required, positional=count, usage=usage)
    images = [load_image(path) for path in paths]
    check_sampling_flags()
    return images


def check_sampling_flags() -> None:
    """The shared sampling flags, checked before anything is loaded."""
    from unclip_jax.sampling.settings import check_guidance_scale

    if FLAGS.decoder_guidance is not None:
        check_guidance_scale(FLAGS.decoder_guidance, "--decoder_guidance")
    for name in ("decoder_steps", "upsampler_steps"):
        if FLAGS[name].value is not None and FLAGS[name].value < 1:
            raise ValueError(f"--{name} must be >= 1, got {FLAGS[name].value}")
    if FLAGS.temperature is not None and not FLAGS.temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {FLAGS.temperature}")
    if FLAGS.top_p is not None and not 0 < FLAGS.top_p <= 1:
        raise ValueError(f"--top_p must be in (0, 1], got {FLAGS.top_p}")
    if FLAGS.top_k is not None and FLAGS.top_k < 0:
        raise ValueError(f"--top_k must be >= 0 (0: off), got {FLAGS.top_k}")


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] → [size, size, 3] (centre square, bicubic), to sit in a grid row."""
    from unclip_jax.pipelines.images import center_square, resize

    return resize(center_square(image), size)


def source_and_row(source: np.ndarray, images: np.ndarray, caption: str) -> np.ndarray:
    """A captioned one-row grid: the source image (fitted) then `images` [N, S, S, 3]."""
    from unclip_jax.pipelines.images import captioned_grid

    row = np.concatenate([fit(source, images.shape[1])[None], images])
    return captioned_grid(row[None], [caption])
