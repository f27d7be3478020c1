# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # unclip_jax: sampling a pipeline
#
# Text → image with unCLIP (Ramesh et al. 2022) on whatever accelerator this runtime has: one
# GPU, a TPU v2-8, one chip of a v5e-1 / v6e-1, or the CPU. The pipeline is a directory: the
# demo's (`make demo` writes `workdirs/demo/pipeline`), one you trained, or a Karlo checkpoint
# converted with `unclip convert-karlo` (on Drive, for instance). Every step below runs top to
# bottom; the settings are in the next cell.

# %%
import os

# The pipeline directory (a path on Drive is mounted first when it starts with /content/drive).
PIPELINE = os.environ.get("UNCLIP_PIPELINE", "/content/drive/MyDrive/unclip/karlo")
# What `pip install` installs: this repository's git URL (`git+https://...`) or a clone's path;
# empty when unclip_jax is installed already.
INSTALL = os.environ.get("UNCLIP_INSTALL", "")
PROMPTS = ["a red circle", "a blue square", "a yellow triangle", "a green star"]
IMAGES_PER_PROMPT = 2
DTYPE = "bfloat16"  # half the parameter memory of float32; the sampling chains stay float32
SEED = 0

# %% [markdown]
# ## Install
#
# The sampling install has no TensorFlow and leaves the runtime's accelerator JAX in place.

# %%
import subprocess
import sys

if INSTALL:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", INSTALL], check=True)
if PIPELINE.startswith("/content/drive"):
    from google.colab import drive

    drive.mount("/content/drive")

# %% [markdown]
# ## The devices and the pipeline
#
# Each batch is split over the local devices (`num_devices`, default all): rows go to devices
# along a data axis, parameters are replicated.

# %%
import time

import jax
import jax.numpy as jnp
import numpy as np
from IPython.display import display
from PIL import Image

from unclip_jax.pipelines import UnCLIP
from unclip_jax.pipelines.images import captioned_grid

print(f"devices: {jax.devices()}")
pipe = UnCLIP.load(PIPELINE, dtype=jnp.dtype(DTYPE))
print(f"{pipe.image_size} px images, batches split over {pipe.num_devices} device(s), {DTYPE}")


def show(images: np.ndarray, captions: list[str]) -> None:
    """uint8 [R, C, S, S, 3]: one captioned row per caption."""
    display(Image.fromarray(captioned_grid(images, captions)))


# %% [markdown]
# ## A batch of prompts
#
# The first call compiles each stage's program (minutes for a large pipeline on a TPU or GPU).

# %%
start = time.perf_counter()
images = pipe.generate(PROMPTS, IMAGES_PER_PROMPT, seed=SEED)
first_seconds = time.perf_counter() - start
show(images.reshape(len(PROMPTS), IMAGES_PER_PROMPT, *images.shape[1:]), PROMPTS)
print(f"first batch: {first_seconds:.1f} s (compiling included)")

# %% [markdown]
# ## A second batch: new prompts, seed and guidance, no new programs
#
# Prompts, seeds, guidance scales and step counts are arguments of the compiled programs, so a
# second batch of the same size reuses them.

# %%
compiled = pipe.compiled_programs()
more = ["a purple circle", "an orange square", "a large blue star", "a small red triangle"]
start = time.perf_counter()
images = pipe.generate(more, IMAGES_PER_PROMPT, seed=SEED + 1, decoder_guidance=3.0)
second_seconds = time.perf_counter() - start
show(images.reshape(len(more), IMAGES_PER_PROMPT, *images.shape[1:]), more)
assert pipe.compiled_programs() == compiled, "the second batch compiled a new program"
print(f"second batch: {second_seconds:.1f} s, no new programs ({first_seconds:.1f} s first)")

# %% [markdown]
# ## Variations and an interpolation
#
# Variations keep an image's CLIP embedding and decode it afresh (§3.1); an interpolation slerps
# between two images' embeddings (§3.2). Both need the CLIP image encoder, which a converted
# Karlo checkpoint does not have.

# %%
if pipe.embeds_images:
    source, target = images[0], images[IMAGES_PER_PROMPT]
    variations = pipe.variations(source, 4, seed=SEED)
    show(np.stack([source, *variations])[None], ["source, then variations"])
    strip = pipe.interpolate(source, target, 5, seed=SEED)
    show(strip[None], ["interpolation"])
else:
    print("this checkpoint has no CLIP image encoder: no variations or interpolations")
