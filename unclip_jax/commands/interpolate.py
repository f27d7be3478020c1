"""`unclip interpolate A B --checkpoint DIR --out DIR [--frames N] [--eta X]
[--x_T inverted|random]`: frames from image A to image B, slerping their CLIP image embeddings
(unCLIP §3.2). By default the decoder's x_T is slerped between the DDIM inversions of A and B,
so that at η = 0 (the default; best with --decoder_guidance=1) the end frames reproduce A and B;
--x_T=random fixes x_T to one random draw for every frame. Writes `frame_*.png` and `grid.png`
(A, the frames, B)."""

import numpy as np
from absl import app, flags

from unclip_jax.commands import common

FLAGS = flags.FLAGS
common.adopt_flags(__name__, image_operation=True)
flags.DEFINE_integer("frames", 5, "Frames, A's embedding first and B's last (>= 2).")


def main(argv: list[str]) -> None:
    usage = "give two images: unclip interpolate A B --checkpoint DIR --out DIR"
    image_a, image_b = common.read_images(argv, 2, usage)
    from unclip_jax.pipelines import arguments

    frames = arguments.check_count("--frames", FLAGS.frames, least=2)
    out, pipe = common.open_run()
    images = pipe.interpolate(
        image_a,
        image_b,
        frames,
        seed=FLAGS.seed,
        **common.x_T_options(),
        **common.decoder_options(),
    )
    files = common.image_files("frame", images)
    row = np.concatenate([images, common.fit(image_b, images.shape[1])[None]])
    files["grid.png"] = common.source_and_row(image_a, row, "A, frames A → B, B")
    common.write_results(out, files)
    print(f"wrote {frames} frames and grid.png to {out}")


if __name__ == "__main__":
    app.run(main)
