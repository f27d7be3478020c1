"""`unclip convert-dvae --encoder FILE --decoder FILE --out DIR [--allow_pickle]`: OpenAI's
DALL·E dVAE (the `dall_e` package's Encoder and Decoder, as `state_dict` files or, with
--allow_pickle, the released whole-module pickles encoder.pkl / decoder.pkl) -> our dVAE
checkpoint (`dvae_config.json` + orbax parameters, `unclip_jax.convert.dvae`).
"""

from absl import app, flags

from unclip_jax.commands.usage import check_usage

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "encoder", None, "dall_e Encoder weights: a state_dict file (or a pickle, see --allow_pickle)."
)
flags.DEFINE_string(
    "decoder", None, "dall_e Decoder weights: a state_dict file (or a pickle, see --allow_pickle)."
)
flags.DEFINE_string(
    "out", None, "Output directory for the converted checkpoint.", allow_override=True
)
flags.DEFINE_bool(
    "allow_pickle",
    False,
    "Also read whole-module pickles such as OpenAI's encoder.pkl / decoder.pkl. Unpickling runs "
    "code from the file (and imports the dall_e package): use it only for files you trust.",
)


def main(argv: list[str]) -> None:
    check_usage(argv, "encoder", "decoder", "out")
    from unclip_jax.convert.dvae import check_save_target, convert_files
    from unclip_jax.pipelines.outputs import check_output_dir

    check_output_dir(FLAGS.out)  # before any weight is read: writable,
    check_save_target(FLAGS.out)  # and new, empty or an earlier dVAE checkpoint
    convert_files(FLAGS.encoder, FLAGS.decoder, FLAGS.out, allow_pickle=FLAGS.allow_pickle)


if __name__ == "__main__":
    app.run(main)
