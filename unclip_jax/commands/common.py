"""What the sampling subcommands share: their flags and checks, loading the pipeline, and grids
of a source image beside its results (the output directory and the compilation cache are
`pipelines.outputs`'s, which the demo uses too).

`--out` and `--checkpoint` also name other subcommands' flags; they are defined with
`allow_override` so that any set of subcommand modules can be imported together.
"""

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


def adopt_flags(module_name: str, image_operation: bool = False) -> None:
    """List this module's flags (and, for an `image_operation`, --eta and --x_T) in the help of
    the command `module_name` as its own."""
    names = [f.name for f in flags.FLAGS.get_key_flags_for_module(__name__)]
    for name in [*names, *(IMAGE_OPERATION_FLAGS if image_operation else ())]:
        flags.FLAGS.register_key_flag_for_module(module_name, flags.FLAGS[name])


flags.DEFINE_string(
    "compilation_cache",
    str(Path.home() / ".cache" / "unclip_jax" / "xla"),
    "Persistent JAX compilation cache directory ('' turns it off).",
)


def load_pipeline(checkpoint: str | None, **load_options: Any):
    """The UnCLIP of `--checkpoint`, with progress bars; `load_options` are more keywords of
    `UnCLIP.load` (e.g. `prior=`)."""
    if not checkpoint:
        raise ValueError("--checkpoint must name a pipeline directory")
    from unclip_jax.pipelines.unclip import UnCLIP

    return UnCLIP.load(checkpoint, num_devices=FLAGS.num_devices, progress=True, **load_options)


def open_run(**load_options: Any) -> tuple[Path, Any]:
    """(the checked `--out` directory, the pipeline of `--checkpoint` loaded with
    `load_options`), the compilation cache turned on: what every sampling command does once its
    own flags are checked."""
    from unclip_jax.pipelines import outputs

    out = outputs.check_output_dir(FLAGS.out, overwrite=FLAGS.overwrite)
    outputs.enable_compilation_cache(FLAGS.compilation_cache)
    return out, load_pipeline(FLAGS.checkpoint, **load_options)


def write_results(out: Path, files: dict[str, Any]) -> None:
    """All files of a run into `out` at once; with --overwrite they replace what it held."""
    from unclip_jax.pipelines import outputs

    outputs.write_outputs(out, files, replace=FLAGS.overwrite)


def decoder_options() -> dict[str, Any]:
    """The decoder and upsampler flags as `UnCLIP`'s `DecoderOptions`."""
    names = ("decoder_steps", "upsampler_steps", "decoder_guidance")
    return {name: FLAGS[name].value for name in names}


def x_T_options() -> dict[str, Any]:
    """--x_T and --eta (when given) as keywords of `variations` / `interpolate`."""
    options = {"x_T": FLAGS.x_T}
    if FLAGS.eta is not None:
        options["eta"] = FLAGS.eta
    return options


def image_files(prefix: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """{"<prefix>_<i>.png": image} for uint8 images [N, H, W, 3]."""
    return {f"{prefix}_{i:03d}.png": image for i, image in enumerate(images)}


def read_images(argv: list[str], count: int, usage: str) -> list[np.ndarray]:
    """The `count` images named by the positional arguments (uint8 [H, W, 3] each), read and the
    shared sampling flags checked before anything is loaded."""
    from unclip_jax.pipelines.images import load_image

    images = [load_image(path) for path in check_usage(argv, positional=count, usage=usage)]
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


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] → [size, size, 3] (centre square, bicubic), to sit in a grid row."""
    from unclip_jax.pipelines.images import center_square, resize

    return resize(center_square(image), size)


def source_and_row(source: np.ndarray, images: np.ndarray, caption: str) -> np.ndarray:
    """A captioned one-row grid: the source image (fitted) then `images` [N, S, S, 3]."""
    from unclip_jax.pipelines.images import captioned_grid

    row = np.concatenate([fit(source, images.shape[1])[None], images])
    return captioned_grid(row[None], [caption])
