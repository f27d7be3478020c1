"""`unclip embed --config configs/X.py --checkpoint DIR --out DIR [--split train]`: CLIP text and
image embeddings of a data set, written as embedding shards (`data/embedding_shards.py`) for
prior training.

The data set is `config.data.source` (with `config.data.data_dir`); the CLIP checkpoint is a
directory from `unclip convert-clip` or a CLIP training run's `<workdir>/clip`, with its
tokenizer in `tokenizer/`. Every caption of an image gives one row (the image embedding is
computed once). Examples are cut into shards of at most `--shard_size` images, each named by the
examples it holds; a re-run embeds only the examples no complete shard holds, so an interrupted
run resumes (with any `--shard_size`) without repeating or skipping an example.
"""

import pathlib

from absl import app, flags
from ml_collections import config_flags

from unclip_jax.commands.usage import check_usage

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file(
    "config", None, "Config file naming the data (config.data).", allow_override=True
)
flags.DEFINE_string("checkpoint", None, "CLIP checkpoint directory (clip_config.json, params/).")
flags.DEFINE_string("out", None, "Directory for the embedding shards.", allow_override=True)
flags.DEFINE_string("split", "train", "Split of the data source.")
flags.DEFINE_integer("batch_size", 64, "Images per encoder call.")
flags.DEFINE_integer("shard_size", 4096, "Images per shard (may change between resumed runs).")
SIZES = ("batch_size", "shard_size")
flags.DEFINE_bool("token_states", False, "Also store the text encoder's last hidden states.")
flags.DEFINE_enum(
    "storage_dtype", "float16", ["float16", "float32"], "Storage dtype of the embeddings."
)


def main(argv: list[str]) -> None:
    check_usage(argv, "config", "checkpoint", "out")
    from unclip_jax.convert.hf_clip import CONFIG_FILE, read_clip_config
    from unclip_jax.data.sources import open_source
    from unclip_jax.pipelines.arguments import check_count
    from unclip_jax.pipelines.outputs import check_output_dir
    from unclip_jax.train.clip_embeddings import embed_source

    options = {name: check_count(f"--{name}", FLAGS[name].value) for name in SIZES}
    check_output_dir(FLAGS.out)  # writable; the shards it holds already are resumed from
    config_file = pathlib.Path(FLAGS.checkpoint) / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(
            f"--checkpoint {FLAGS.checkpoint!r} is not a CLIP checkpoint: no {CONFIG_FILE}"
        )
    read_clip_config(config_file)
    data = FLAGS.config.data
    held_out = data.get("validation_fraction", 0.0)
    source = open_source(data.source, FLAGS.split, data.get("data_dir"), data.image_size, held_out)
    written = embed_source(
        FLAGS.checkpoint,
        source,
        FLAGS.out,
        token_states=FLAGS.token_states,
        dtype=FLAGS.storage_dtype,
        **options,
    )
    print(f"wrote {written} shards to {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
