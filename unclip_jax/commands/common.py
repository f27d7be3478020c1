"""What the sampling subcommands share: their flags, the compilation cache, the output directory
(checked before any compute, filled all at once), and captioned grids.

`--out` and `--checkpoint` also name other subcommands' flags; they are defined with
`allow_override` so that any set of subcommand modules can be imported together.
"""

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import flags
from PIL import Image, ImageDraw, ImageFont

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "checkpoint",
    None,
    "Pipeline directory (unclip.json and every stage) or converted Karlo checkpoint.",
    allow_override=True,
)
flags.DEFINE_string("out", None, "Output directory for the images.", allow_override=True)
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("decoder_steps", None, "Decoder sampling steps (default: the stage's).")
flags.DEFINE_integer("upsampler_steps", None, "Upsampler sampling steps (default: the stage's).")
flags.DEFINE_float(
    "decoder_guidance", None, "Decoder classifier-free guidance scale (>= 0; default: the stage's)."
)
flags.DEFINE_integer("num_devices", None, "Local devices to shard the batch over (default: all).")
flags.DEFINE_string(
    "compilation_cache",
    str(Path.home() / ".cache" / "unclip_jax" / "xla"),
    "Persistent JAX compilation cache directory ('' turns it off).",
)


def enable_compilation_cache(directory: str) -> None:
    """Compiled programs are kept in `directory` across runs (off when it is empty)."""
    if not directory:
        return
    import jax

    Path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def check_output_dir(path: str | None) -> Path:
    """The output directory, after checking that it can be created and written (no compute yet).

    ValueError naming the directory when it is a file or not writable.
    """
    if not path:
        raise ValueError("--out must name an output directory")
    out = Path(path).absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {str(out)!r} exists and is not a directory")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"output directory {str(out)!r} is not writable ({existing} is not)")
    return out


def write_outputs(out: Path, files: dict[str, np.ndarray | str]) -> None:
    """Writes PNGs (uint8 arrays) and text files into a temporary directory next to `out`, then
    moves them in: an interruption leaves no partial set."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, value in files.items():
            if isinstance(value, str):
                (staging / name).write_text(value)
            else:
                Image.fromarray(value).save(staging / name)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_pipeline(checkpoint: str | None):
    """The UnCLIP of `--checkpoint`, with progress bars."""
    if not checkpoint:
        raise ValueError("--checkpoint must name a pipeline directory")
    from unclip_jax.pipeline import UnCLIP

    return UnCLIP.load(checkpoint, num_devices=FLAGS.num_devices, progress=True)


def captioned_grid(
    images: np.ndarray,  # uint8 [R, C, H, W, 3]
    captions: Sequence[str],  # one per row
    label_width: int = 160,
) -> np.ndarray:  # uint8 [R·(H+2), label_width + C·(W+2), 3]
    """One row of images per caption, the caption written to the left of its row."""
    rows, columns, height, width, _ = images.shape
    if len(captions) != rows:
        raise ValueError(f"need one caption per row ({rows}), got {len(captions)}")
    cell_h, cell_w = height + 2, width + 2
    canvas = Image.new("RGB", (label_width + columns * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, caption in enumerate(captions):
        text = caption or "(unconditional)"
        lines, line = [], ""
        for word in text.split():
            candidate = f"{line} {word}".strip()
            if draw.textlength(candidate, font=font) > label_width - 8 and line:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
        draw.multiline_text((4, r * cell_h + 4), "\n".join(lines), fill=(0, 0, 0), font=font)
        for c in range(columns):
            canvas.paste(
                Image.fromarray(images[r, c]), (label_width + c * cell_w + 1, r * cell_h + 1)
            )
    return np.asarray(canvas)


def image_files(prefix: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """{"<prefix>_<i>.png": image} for uint8 images [N, H, W, 3]."""
    return {f"{prefix}_{i:03d}.png": image for i, image in enumerate(images)}


def check_sampling_flags() -> None:
    """The shared sampling flags, checked before anything is loaded."""
    if FLAGS.decoder_guidance is not None and not FLAGS.decoder_guidance >= 0:
        raise ValueError(f"--decoder_guidance must be >= 0, got {FLAGS.decoder_guidance}")
    for name in ("decoder_steps", "upsampler_steps"):
        if FLAGS[name].value is not None and FLAGS[name].value < 1:
            raise ValueError(f"--{name} must be >= 1, got {FLAGS[name].value}")


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] → [size, size, 3] (centre square, bicubic), to sit in a grid row."""
    from unclip_jax.pipeline_images import center_square, resize

    return resize(center_square(image), size)


def source_and_row(source: np.ndarray, images: np.ndarray, caption: str) -> np.ndarray:
    """A captioned one-row grid: the source image (fitted) then `images` [N, S, S, 3]."""
    row = np.concatenate([fit(source, images.shape[1])[None], images])
    return captioned_grid(row[None], [caption])
