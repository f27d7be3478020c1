"""The `unclip` console script: `unclip SUBCOMMAND [flags]`.

Each subcommand is a module with absl flags and a `main(argv)`; only the chosen module is imported.
"""

import importlib
import math
import os
import sys

from absl import app, flags

from unclip_jax import console

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("unclip_jax.commands.train", "train one stage: --config configs/X.py --workdir DIR"),
    "train-folder": (
        "unclip_jax.demo.train_folder",
        "the whole chain on your captioned images: --images DIR --workdir DIR",
    ),
    "study": (
        "unclip_jax.demo.study",
        "the papers' claims on the shapes, every arm: --config configs/study.py[:fast|:full]",
    ),
    "convert-clip": (
        "unclip_jax.commands.convert_clip",
        "Hugging Face CLIP directory -> CLIP checkpoint: --hf-dir DIR --out DIR",
    ),
    "convert-dvae": (
        "unclip_jax.commands.convert_dvae",
        "OpenAI dall_e dVAE -> checkpoint: --encoder FILE --decoder FILE --out DIR",
    ),
    "convert-karlo": (
        "unclip_jax.commands.convert_karlo",
        "diffusers UnCLIP (Karlo) directory -> checkpoint: --diffusers-dir DIR --out DIR",
    ),
    "embed": (
        "unclip_jax.commands.embed",
        "CLIP embeddings of a data set as shards: --config X.py --checkpoint DIR --out DIR",
    ),
    "generate": (
        "unclip_jax.commands.generate",
        'images for prompts (unCLIP or DALL·E pipeline): "PROMPT" [...] --checkpoint DIR --out DIR',
    ),
    "complete": (
        "unclip_jax.commands.complete",
        "DALL·E image completion: IMAGE --prompt CAPTION --keep_rows K --checkpoint DIR --out DIR",
    ),
    "variations": (
        "unclip_jax.commands.variations",
        "variations of an image: IMAGE --checkpoint DIR --out DIR",
    ),
    "interpolate": (
        "unclip_jax.commands.interpolate",
        "frames between two images: A B --checkpoint DIR --out DIR",
    ),
    "textdiff": (
        "unclip_jax.commands.textdiff",
        "edit an image by a caption change: IMAGE --from CAPTION --to CAPTION --checkpoint DIR",
    ),
    "serve": (
        "unclip_jax.commands.serve",
        "a local web page: prompt -> images, image -> variations: --checkpoint DIR [--port 7860]",
    ),
    "eval": (
        "unclip_jax.commands.evaluate",
        "oracle accuracy and CLIP score of generated images: --images DIR [--score_clip DIR]",
    ),
}


# Modules of an optional extra (`pip install 'unclip_jax[EXTRA]'`) -> that extra.
EXTRA_MODULES = {
    "tensorflow": "train",
    "tensorflow_datasets": "train",
    "tensorboardX": "train",
    "torch": "test",
    "diffusers": "test",
    "gradio": "serve",
}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The line for a module of an optional extra that is not installed; None for any other."""
    root = (error.name or "").split(".")[0]
    if root not in EXTRA_MODULES:
        return None
    extra = EXTRA_MODULES[root]
    return f"needs the {extra!r} extra (no module {root!r}): pip install 'unclip_jax[{extra}]'"


def usage() -> str:
    lines = ["usage: unclip SUBCOMMAND [flags]   (unclip SUBCOMMAND --help for its flags)", ""]
    width = max(len(name) for name in SUBCOMMANDS)
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in sorted(SUBCOMMANDS.items())]
    return "\n".join(lines)


def _plain(error: BaseException) -> str:
    """The innermost message of an error (ml_collections wraps a KeyError in an AttributeError,
    and a config's own error in the text of its traceback: its last line is kept)."""
    message = error
    while isinstance(message, BaseException) and message.args:
        message = message.args[0]
    text = str(message)
    if "Traceback (most recent call last)" in text:
        head = text.split("Traceback", 1)[0].strip()
        last = text.strip().splitlines()[-1].strip()
        text = f"{head} {last}"
    return text.replace("\n", " ")


def _describe(error: Exception) -> str:
    """One line for an error: an OSError from the system (a full disk, a read-only or forbidden
    path) as `PATH: reason`, which names the path; anything else as its message."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        target = f" -> {error.filename2}" if error.filename2 is not None else ""
        return f"{error.filename}{target}: {error.strerror}"
    return str(error).replace("\n", " ")


def non_finite_float_flags(module_name: str) -> list[str]:
    """`--name=value` of each float flag of the subcommand (its own and adopted key flags) whose
    value is an infinity or NaN: no float setting of any subcommand means anything there."""
    bad = []
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        if not isinstance(flag.parser, flags.FloatParser) or flag.value is None:
            continue
        values = flag.value if isinstance(flag.value, list) else [flag.value]
        bad += [f"--{flag.name}={v}" for v in values if not math.isfinite(v)]
    return bad


def _config_import_roots(argv: list[str]) -> list[str]:
    """Folders from which `configs.*` imports resolve: the working directory and, for each
    `--config PATH[:ARG]`, the folder holding PATH's folder (configs import `configs.base`)."""
    roots = [os.getcwd()]
    for k, arg in enumerate(argv):
        path = None
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and k + 1 < len(argv):
            path = argv[k + 1]
        if path:
            roots.append(os.path.dirname(os.path.dirname(os.path.abspath(path.split(":")[0]))))
    return roots


def run(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in SUBCOMMANDS:
        print(f"unclip: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    for root in _config_import_roots(argv[2:]):
        if root not in sys.path:
            sys.path.append(root)
    try:
        module = importlib.import_module(SUBCOMMANDS[name][0])
    except ModuleNotFoundError as error:
        if missing_extra(error) is None:
            raise
        print(f"unclip {name}: error: {missing_extra(error)}", file=sys.stderr)
        sys.exit(1)
    if any(arg in ("-h", "--help", "--helpshort") for arg in argv[2:]):
        print(f"unclip {name}: {module.__doc__.strip()}\n")
        print(flags.FLAGS.module_help(module.__name__))
        sys.exit(0)

    def main(sub_argv: list[str]) -> None:
        console.configure(flags.FLAGS.log_level)
        try:
            module.main(sub_argv)
        except (ValueError, OSError) as error:
            # Bad input, a corrupt file, a full disk, an unwritable path: one clear line naming
            # the value or the path, no traceback from deep inside a library.
            print(f"unclip {name}: error: {_describe(error)}", file=sys.stderr)
            sys.exit(1)
        except app.UsageError as error:
            print(f"unclip {name}: error: {error}", file=sys.stderr)
            sys.exit(2)
        except ModuleNotFoundError as error:
            if missing_extra(error) is None:
                raise
            print(f"unclip {name}: error: {missing_extra(error)}", file=sys.stderr)
            sys.exit(1)

    def parse_flags(sub_argv: list[str]) -> list[str]:
        try:
            rest = flags.FLAGS(sub_argv)
        except (flags.Error, AttributeError, KeyError, ValueError) as error:
            # A missing flag or a `--config.` override naming no field: say which, no traceback.
            print(f"unclip {name}: error in flags: {_plain(error)}", file=sys.stderr)
            sys.exit(2)
        bad = non_finite_float_flags(module.__name__)
        if bad:
            message = f"{', '.join(bad)}: float flags must be finite numbers"
            print(f"unclip {name}: error in flags: {message}", file=sys.stderr)
            sys.exit(2)
        return rest

    app.run(main, argv=[f"unclip {name}", *argv[2:]], flags_parser=parse_flags)


if __name__ == "__main__":
    run()
