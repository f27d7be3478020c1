"""`unclip variations IMAGE --checkpoint DIR --out DIR [--num_variations N] [--eta X]
[--x_T inverted|random]`: images that keep the CLIP image embedding of IMAGE (unCLIP §3.1).
By default each is decoded from IMAGE's DDIM inversion with DDIM η = 1 and its own step noise
(--eta=0 reproduces IMAGE, best with --decoder_guidance=1; larger η varies it more);
--x_T=random decodes each from new noise instead (η 0 unless --eta). Writes `variation_*.png`
and `grid.png` (the source first)."""

from absl import app, flags

from unclip_jax.commands import common

FLAGS = flags.FLAGS
common.adopt_flags(__name__, image_operation=True)
flags.DEFINE_integer("num_variations", 4, "How many variations.")


def main(argv: list[str]) -> None:
    usage = "give one image: unclip variations IMAGE --checkpoint DIR --out DIR"
    (source,) = common.read_images(argv, 1, usage)
    from unclip_jax.pipelines import arguments

    n = arguments.check_count("--num_variations", FLAGS.num_variations)
    out, pipe = common.open_run()
    images = pipe.variations(
        source, n, seed=FLAGS.seed, **common.x_T_options(), **common.decoder_options()
    )
    files = common.image_files("variation", images)
    files["grid.png"] = common.source_and_row(source, images, "variations of the source (left)")
    common.write_results(out, files)
    print(f"wrote {n} variations and grid.png to {out}")


if __name__ == "__main__":
    app.run(main)
