"""`unclip convert-clip --hf-dir DIR --out DIR`: a local Hugging Face CLIP directory -> our CLIP
checkpoint (orbax parameters + `clip_config.json`), with its tokenizer saved in `OUT/tokenizer/`
when the directory has one.
"""

from absl import app, flags

from unclip_jax.commands.usage import check_usage

FLAGS = flags.FLAGS

flags.DEFINE_string("hf-dir", None, "Hugging Face CLIP directory (config.json + weights).")
flags.DEFINE_string(
    "out", None, "Output directory for the converted checkpoint.", allow_override=True
)


def main(argv: list[str]) -> None:
    check_usage(argv, "hf-dir", "out")
    from unclip_jax.convert.hf_clip import convert_directory
    from unclip_jax.pipelines.outputs import check_output_dir

    check_output_dir(FLAGS.out)  # before any weight is read

    convert_directory(FLAGS["hf-dir"].value, FLAGS.out)


if __name__ == "__main__":
    app.run(main)
