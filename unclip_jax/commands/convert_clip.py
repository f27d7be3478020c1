"""`unclip convert-clip --hf-dir DIR --out DIR`: a local Hugging Face CLIP directory -> our CLIP
checkpoint (orbax parameters + `clip_config.json`), with its tokenizer saved in `OUT/tokenizer/`
when the directory has one.
"""

from absl import app, flags

from unclip_jax.commands.required import check_required

FLAGS = flags.FLAGS

flags.DEFINE_string("hf-dir", None, "Hugging Face CLIP directory (config.json + weights).")
flags.DEFINE_string(
    "out", None, "Output directory for the converted checkpoint.", allow_override=True
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    check_required("hf-dir", "out")
    from unclip_jax.convert.hf_clip import convert_directory

    convert_directory(FLAGS["hf-dir"].value, FLAGS.out)


if __name__ == "__main__":
    app.run(main)
