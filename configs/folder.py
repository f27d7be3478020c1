"""The whole chain on your own captioned images (`unclip train-folder`): a folder read by the
`folder_captions` source (`.txt` beside each image, `captions.jsonl`, `captions.tsv` or COCO's
`captions_*.json`), then CLIP → embeddings → prior → decoder → upsampler with the demo's stage
configs and budgets, assembled into `<workdir>/pipeline`.

    unclip train-folder --images ~/my_images --workdir workdirs/mine
    unclip train-folder --images ~/my_images --workdir workdirs/mine --image_size 128 \
        --config.decoder.train.total_steps=5000      # any stage field, as with `unclip train`
    unclip train-folder --images ~/my_images --workdir workdirs/mine \
        --pretrained_clip ~/hf/clip-vit-base-patch32

`images`, `image_size` and `pretrained_clip` are set by the command's flags of the same names;
the driver (`unclip_jax.demo.folder`) wires every stage to them: the images are stored once at
`image_size` (the pipeline's output), the decoder works at `image_size / upsampling` and the
upsampler brings it back; `pretrained_clip` (a Hugging Face CLIP directory or a converted one)
replaces the trained CLIP, frozen, and sets the prior's widths. `validation_fraction` of the
images (chosen by a hash of their path) are held out for evaluation and the sample grid.

`arg="smoke"`: every stage for a step or two (the tests' run).
"""

import ml_collections

from configs import base, decoder_demo, demo, prior_demo, upsampler_demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"folder config arg must be '' or 'smoke', got {arg!r}")
    stage_arg = "smoke" if arg == "smoke" else None
    config = ml_collections.ConfigDict()
    config.images = ""  # the folder of captioned images
    config.image_size = 64  # px of the stored images and of the pipeline's samples
    config.upsampling = 4  # the decoder samples at image_size / upsampling
    config.validation_fraction = 0.05  # of the images, held out
    config.pretrained_clip = ""  # a Hugging Face or converted CLIP to use frozen ("" = train one)
    config.data_dir = ""  # TFDS data directory ("" = TFDS's default)

    config.clip = demo.clip_stage(stage_arg)
    config.prior = prior_demo.get_config(stage_arg)
    config.decoder = decoder_demo.get_config(stage_arg)
    config.upsampler = upsampler_demo.get_config(stage_arg)
    for stage in (config.clip, config.decoder, config.upsampler):
        base.read_folder(stage.data, config.image_size)
    base.stage_budgets(config, ["clip", "prior", "decoder", "upsampler"])

    config.sampling = demo.sampling_settings()
    config.grid_captions = 8  # rows of samples.png: held-out captions
    config.grid_images_per_caption = 6
    if arg == "smoke":
        config.sampling.update(prior_steps=2, decoder_steps=2, upsampler_steps=2)
        config.grid_captions = 2
        config.grid_images_per_caption = 2
    return config
