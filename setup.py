"""unclip_jax: DALL·E 2 (unCLIP) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="unclip_jax",
    version="0.1.0",
    description="unCLIP (DALL·E 2) in JAX/Flax",
    packages=find_packages(include=["unclip_jax", "unclip_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.7.2,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "transformers>=5.0,<6",
        "tokenizers>=0.22,<0.24",
        "safetensors>=0.5,<1",
        "ml_collections>=1.0,<2",
        "absl-py>=2.1,<3",
        "tqdm>=4.66,<5",
        "pillow>=11,<14",
        "numpy>=2.0,<3",
        "scipy>=1.14,<2",
    ],
    extras_require={
        # Training and data: the shapes set and image folders go through TFDS (TensorFlow on the
        # CPU only), the logs to TensorBoard. Sampling needs none of them.
        "train": [
            "tensorflow-datasets>=4.9.9,<5",
            "tensorflow-cpu>=2.20,<2.22",
            "tensorboardX>=2.6,<3",
        ],
        # CPU torch (the build this machine serves) and diffusers: parity tests only.
        "test": [
            "torch==2.13.0",
            "diffusers>=0.35,<0.43",
            # imported by OpenAI's dall_e (installed --no-deps by the Makefile: dVAE parity tests)
            "attrs>=22",
            "requests>=2.25,<3",
            "pytest>=8,<10",
            "pytest-xdist>=3.6,<4",
            "ruff>=0.15,<0.18",
            # the serve page driven in Debian's Chromium (chromium, chromium-driver)
            "selenium>=4.51,<5",
            # the notebook: its jupytext pair read, executed on the CPU
            "jupytext>=1.16,<2",
            "nbclient>=0.10,<0.12",
            "nbformat>=5.10,<6",
            "ipykernel>=6.29,<8",
        ],
        # oneDNN's headers and library: the CPU convolutions of nn/conv.py, built by
        # `python -m unclip_jax.nn.native.build` (`make venv` runs it).
        "cpu": ["onednn-devel-cpu-gomp==2023.2.0"],
        # `unclip serve`: the local web page.
        "serve": ["gradio>=6.31,<7"],
        # Deviceless TPU compilation (jax.experimental.topologies) for the paper-size configs.
        "tpu": ["jax[tpu]==0.10.2"],
    },
    entry_points={"console_scripts": ["unclip=unclip_jax.cli:run"]},
)
