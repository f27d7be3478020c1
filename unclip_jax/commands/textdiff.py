"""`unclip textdiff IMAGE --from "a red circle" --to "a blue circle" --checkpoint DIR --out DIR`:
edits IMAGE toward the caption change, z_θ = slerp(z_i, normalize(z_t' − z_t), θ), decoded from
the DDIM inversion of IMAGE (unCLIP §3.3). Writes `theta_<index>_<θ>.png` (the index in --thetas,
then θ exactly, e.g. `theta_01_0.501.png`) and `grid.png`."""

from absl import app, flags

from unclip_jax.commands import common

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(common)
flags.DEFINE_string("from", None, "Caption describing the image as it is.")
flags.DEFINE_string("to", None, "Caption describing the wanted image.")
flags.DEFINE_list("thetas", ["0", "0.25", "0.5", "0.75"], "Interpolation amounts in [0, 1].")


def main(argv: list[str]) -> None:
    usage = "give one image: unclip textdiff IMAGE --from ... --to ... --checkpoint DIR --out DIR"
    (source,) = common.read_images(argv, 1, usage)
    if FLAGS["from"].value is None or FLAGS.to is None:
        raise ValueError("--from and --to must both be given")
    from unclip_jax.pipelines.arguments import check_prompts

    check_prompts([FLAGS["from"].value, FLAGS.to])
    try:
        thetas = [float(t) for t in FLAGS.thetas]
    except ValueError:
        raise ValueError(f"--thetas must be numbers in [0, 1], got {FLAGS.thetas}") from None
    if not thetas or any(not 0 <= t <= 1 for t in thetas):
        raise ValueError(f"--thetas must be numbers in [0, 1], got {FLAGS.thetas}")
    out, pipe = common.open_run()
    images = pipe.text_diff(
        source,
        FLAGS["from"].value,
        FLAGS.to,
        thetas,
        seed=FLAGS.seed,
        **common.decoder_options(),
    )
    files = {
        f"theta_{k:02d}_{t!r}.png": image
        for k, (t, image) in enumerate(zip(thetas, images, strict=True))
    }
    caption = f"{FLAGS['from'].value} → {FLAGS.to}, θ = {', '.join(FLAGS.thetas)}"
    files["grid.png"] = common.source_and_row(source, images, caption)
    common.write_results(out, files)
    print(f"wrote {len(images)} edits and grid.png to {out}")


if __name__ == "__main__":
    app.run(main)
