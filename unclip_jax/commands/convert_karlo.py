"""`unclip convert-karlo --diffusers-dir DIR --out DIR`: a local diffusers UnCLIPPipeline
directory (Karlo: prior, text_proj, decoder, super_res_first, super_res_last, text_encoder,
tokenizer, schedulers) -> our checkpoint directory (`unclip_jax.convert.diffusers_unclip`,
`unclip_jax.convert.karlo_checkpoint`).
"""

import pathlib

from absl import app, flags

from unclip_jax.commands.usage import check_usage

FLAGS = flags.FLAGS

flags.DEFINE_string("diffusers-dir", None, "diffusers UnCLIPPipeline directory (Karlo).")
flags.DEFINE_string(
    "out", None, "Output directory for the converted checkpoint.", allow_override=True
)


def convert(diffusers_dir: str | pathlib.Path, out: str | pathlib.Path) -> None:
    """Convert every component of `diffusers_dir` and save the checkpoint at `out`."""
    from unclip_jax.convert.diffusers_unclip import convert_karlo
    from unclip_jax.convert.karlo_checkpoint import num_params, save_karlo

    checkpoint = convert_karlo(diffusers_dir)
    save_karlo(checkpoint, out)
    counts = {name: num_params(params) for name, params in checkpoint.params.items()}
    summary = ", ".join(f"{name} {count:,}" for name, count in counts.items())
    print(f"converted {diffusers_dir} -> {out}: {summary} parameters")


def main(argv: list[str]) -> None:
    check_usage(argv, "diffusers-dir", "out")
    from unclip_jax.convert.karlo_checkpoint import check_save_target
    from unclip_jax.pipelines.outputs import check_output_dir

    check_output_dir(FLAGS.out)  # before any weight is read: writable,
    check_save_target(FLAGS.out)  # and new, empty or an earlier Karlo checkpoint
    convert(FLAGS["diffusers-dir"].value, FLAGS.out)


if __name__ == "__main__":
    app.run(main)
