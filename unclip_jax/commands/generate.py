"""`unclip generate "prompt" [...] --checkpoint DIR --out DIR`: images for each prompt, written as
PNGs (`<prompt index>_<image index>.png`), a captioned grid (`grid.png`, one row per prompt) and
`captions.json` (file → prompt, read by `unclip eval`). `--rerank N` draws N candidates per image
and keeps the one of the largest CLIP score.

`--checkpoint` is an unCLIP pipeline directory, a converted Karlo checkpoint (`unclip
convert-karlo`) or a DALL·E pipeline directory (`pipelines.dalle_store`), told apart by its
manifest. unCLIP: steps, guidance scales and prior candidates not given are the checkpoint's
(Karlo's: prior 25 steps at guidance 4, decoder 25 at 8, super-res 7); `--prior` picks the
diffusion prior or the autoregressive one (§2.1; its steps are its code count) where the
directory holds both; one it does not hold is an error naming the directory and the priors it
has. DALL·E: `--temperature`, `--top_k` and `--top_p` set the sampling of the codes (default: the
pipeline's, the paper's temperature 1 without truncation); a flag of the other kind of pipeline
is refused by name.

An empty prompt ("") is unconditional; a prompt longer than the tokenizer's context is truncated
with a warning. Arguments are checked, and the output directory tested for writing, before
anything is loaded or compiled. `--out` must be new or empty; with `--overwrite` its earlier
contents are replaced, once all new files are written.
"""

import json

from absl import app, flags

from unclip_jax.commands import common
from unclip_jax.pipelines import images as pipeline_images

FLAGS = flags.FLAGS
common.adopt_flags(__name__, sampling=True)
flags.DEFINE_integer("prior_steps", None, "Prior sampling steps (default: the stage's).")
flags.DEFINE_float(
    "prior_guidance", None, "Prior classifier-free guidance scale (>= 0; default: the stage's)."
)
flags.DEFINE_integer(
    "prior_candidates",
    None,
    "z_i samples per image; the largest z_i·z_t is kept (default: the stage's).",
)
flags.DEFINE_enum(
    "prior",
    None,
    ["diffusion", "ar"],
    "Which prior of the checkpoint samples z_i: 'diffusion' or 'ar' (autoregressive, §2.1; "
    "default: the diffusion prior where the checkpoint holds one).",
)
# The settings of unCLIP pipelines alone, refused by name with a DALL·E one.
UNCLIP_FLAGS = ("prior", "prior_steps", "prior_guidance", "prior_candidates", *common.DECODER_FLAGS)


def main(argv: list[str]) -> None:
    prompts = list(argv[1:])
    if not prompts:
        raise app.UsageError('give at least one prompt: unclip generate "a red circle" ...')
    from unclip_jax.pipelines import arguments
    from unclip_jax.sampling.settings import check_guidance_scale

    arguments.check_prompts(prompts)
    common.check_sampling_flags()
    if FLAGS.prior_guidance is not None:
        check_guidance_scale(FLAGS.prior_guidance, "--prior_guidance")
    if FLAGS.prior_steps is not None and FLAGS.prior_steps < 1:
        raise ValueError(f"--prior_steps must be >= 1, got {FLAGS.prior_steps}")
    for name in ("num_images", "prior_candidates", "rerank"):
        if FLAGS[name].value is not None:
            arguments.check_count(f"--{name}", FLAGS[name].value)
    out = common.open_output()
    kind = common.checkpoint_kind()
    if kind == "dalle":
        common.refuse_flags(UNCLIP_FLAGS, kind)
        pipe = common.load_pipeline(FLAGS.checkpoint, kind)
        options = common.dalle_options()
    else:
        common.refuse_flags(common.DALLE_FLAGS, kind)
        pipe = common.load_pipeline(FLAGS.checkpoint, kind, prior=FLAGS.prior)
        options = dict(
            prior_steps=FLAGS.prior_steps,
            prior_guidance=FLAGS.prior_guidance,
            **common.decoder_options(),
            prior_candidates=FLAGS.prior_candidates,
        )
    with common.warnings_printed("generate"):
        images = pipe.generate(
            prompts, FLAGS.num_images, seed=FLAGS.seed, rerank_candidates=FLAGS.rerank, **options
        )
    n = FLAGS.num_images
    files, captions = {}, {}
    for i, image in enumerate(images):
        name = f"{i // n:03d}_{i % n:02d}.png"
        files[name] = image
        captions[name] = prompts[i // n]
    grid = images.reshape(len(prompts), n, *images.shape[1:])
    files["grid.png"] = pipeline_images.captioned_grid(grid, prompts)
    files["captions.json"] = json.dumps(captions, indent=1)
    common.write_results(out, files)
    print(f"wrote {len(images)} images and grid.png to {out}")


if __name__ == "__main__":
    app.run(main)
