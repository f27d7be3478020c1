"""`unclip complete IMAGE --prompt CAPTION --keep_rows K --checkpoint DIR --out DIR`: DALL·E's
image completion (Ramesh et al. 2021): the top K rows of IMAGE's dVAE codes kept, the rest drawn
by the transformer for CAPTION (--num_images completions, each the best of --rerank candidates
by CLIP score; --temperature, --top_k, --top_p as `unclip generate`'s). Writes
`completion_*.png`, `grid.png` (the source first) and `captions.json` (file → caption, read by
`unclip eval`).

`--checkpoint` is a DALL·E pipeline directory; K is in [0, the code grid's rows) (0 keeps none).
Arguments are checked, and the output directory tested for writing, before anything is loaded or
compiled; `--out` must be new or empty unless --overwrite.
"""

import json

from absl import app, flags

from unclip_jax.commands import common

FLAGS = flags.FLAGS
common.adopt_flags(__name__, sampling=True, unclip=False)
flags.DEFINE_string("prompt", None, "The caption the completions follow.")
flags.DEFINE_integer(
    "keep_rows", None, "Rows of the image's code grid kept, from the top (0 <= K < grid rows)."
)


def main(argv: list[str]) -> None:
    usage = (
        'give one image: unclip complete IMAGE --prompt "a red star" --keep_rows K '
        "--checkpoint DIR --out DIR"
    )
    (source,) = common.read_images(argv, 1, usage, required=("prompt", "keep_rows"))
    from unclip_jax.pipelines import arguments

    arguments.check_prompts([FLAGS.prompt])
    for name in ("num_images", "rerank"):
        arguments.check_count(f"--{name}", FLAGS[name].value)
    out = common.open_output()
    kind = common.checkpoint_kind()
    if kind != "dalle":
        raise ValueError(
            f"unclip complete draws with a DALL·E pipeline; --checkpoint {FLAGS.checkpoint!r} "
            "holds an unCLIP one"
        )
    common.refuse_flags(common.DECODER_FLAGS, kind)
    pipe = common.load_pipeline(FLAGS.checkpoint, kind)
    with common.warnings_printed("complete"):
        images = pipe.complete(
            source,
            FLAGS.prompt,
            FLAGS.keep_rows,
            FLAGS.num_images,
            seed=FLAGS.seed,
            rerank_candidates=FLAGS.rerank,
            **common.dalle_options(),
        )
    files = common.image_files("completion", images)
    captions = {name: FLAGS.prompt for name in files}
    caption = f"{FLAGS.prompt} (top {FLAGS.keep_rows} rows of the source, left)"
    files["grid.png"] = common.source_and_row(source, images, caption)
    files["captions.json"] = json.dumps(captions, indent=1)
    common.write_results(out, files)
    print(f"wrote {len(images)} completions and grid.png to {out}")


if __name__ == "__main__":
    app.run(main)
