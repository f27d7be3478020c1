"""Setup shared by the stage-task tests: a config file's `get_config`, rendered shapes examples,
a folder of random captioned images, a batch's spec for `Task.init`, and Adam on one fixed batch."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import optax
from PIL import Image

from unclip_jax.data import shapes_captions

CONFIG_DIR = Path(__file__).parents[2] / "configs"


def config_file(name: str, arg: str | None = None):
    """`get_config(arg)` of `configs/<name>.py`, loaded by path (from any working directory)."""
    spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def rendered(builder: str, split: str, count: int) -> list[dict]:
    """The first `count` examples of `split` of the shapes_captions config named `builder`."""
    config = next(c for c in shapes_captions.CONFIGS if c.name == builder)
    return [shapes_captions.make_example(config, split, i) for i in range(count)]


def captioned_folder(folder: Path, captions: list[str]) -> str:
    """Random 16x16 PNGs in `folder`, each with its caption in a .txt beside it; returns the
    `folder_captions` source that reads them."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for index, caption in enumerate(captions):
        pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:02d}.png")
        (folder / f"{index:02d}.txt").write_text(f"{caption}\n")
    return f"folder_captions:{folder}"


def batch_spec(batch: dict[str, np.ndarray]) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes and dtypes of one example of `batch` ([1, ...]), as `Task.init` takes them."""
    return {k: jax.ShapeDtypeStruct((1, *v.shape[1:]), v.dtype) for k, v in batch.items()}


def adam_on_fixed_batch(task, params, batch, key: jax.Array, steps: int) -> tuple[list, dict]:
    """`steps` Adam steps (lr 3e-3) of the task's training loss on one batch and key: (the loss
    before each step, the final parameters)."""
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state):
        (loss, _), grads = jax.value_and_grad(task.loss, has_aux=True)(params, batch, key, True)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    return losses, params
