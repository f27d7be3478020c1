"""`unclip train-folder --images DIR --workdir DIR`: the whole chain trained on a folder of your
own captioned images — CLIP (or `--pretrained_clip`, frozen), embeddings, diffusion prior,
decoder, upsampler — into `<workdir>/pipeline`, then a grid of held-out captions
(`<workdir>/samples/samples.png`) and `metrics.json` (CLIP scores, stage times).

The folder: images with a same-name `.txt` caption beside each, or a `captions.jsonl`,
`captions.tsv` or COCO's `captions_*.json` at its root (`data/folder_captions.py`). Budgets and
sizes are `configs/folder.py`'s (the demo's), overridden like any config field:
`--config.decoder.train.total_steps=5000`; `--config configs/folder.py:smoke` runs each stage for
a step. Run from the repository's root (the configs are its `configs/`). Stages are skipped when
finished and resumed when interrupted, as the demo's (`--force`, `--stages`; exit codes 0, 1 and
143 as `unclip train`'s).
"""

from absl import flags

from unclip_jax import console
from unclip_jax.demo import folder, stages
from unclip_jax.storage.locations import location

FLAGS = flags.FLAGS
stages.define_flags(
    "configs/folder.py", "workdirs/folder", "samples.png and metrics.json", demo_out=""
)
# `unclip eval` has an --images flag too: where both are imported, the later one stands.
flags.DEFINE_string("images", None, "The folder of captioned images.", allow_override=True)
flags.DEFINE_integer(
    "image_size", None, "Side of the stored images and of the samples (default: the config's, 64)."
)
flags.DEFINE_string(
    "pretrained_clip",
    None,
    "A Hugging Face CLIP directory, or one from `unclip convert-clip`, used frozen instead of "
    "training a CLIP on the folder.",
)


def main(argv: list[str]) -> None:
    config = FLAGS.config
    for name in ("images", "image_size", "pretrained_clip"):
        if FLAGS[name].value is not None:
            config[name] = FLAGS[name].value
    folder.check(config)  # before anything is built, trained or compiled
    workdir = location(FLAGS.workdir)
    if not FLAGS.demo_out:
        FLAGS.demo_out = str(workdir / "samples")
    with console.log_file(workdir / console.LOG_FILE):
        stages.main(folder.DEMO, argv)
