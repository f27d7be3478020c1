"""TensorFlow and TFDS set-up shared by the builders: TF stays off the accelerators JAX uses."""

import contextlib
import inspect

import tensorflow_datasets as tfds
from etils import epath


def hide_accelerators_from_tf() -> None:
    """Make TensorFlow see no GPU, so that it neither reserves nor initialises device memory."""
    import tensorflow as tf

    # RuntimeError: TF's devices were initialised already and can no longer change.
    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], "GPU")


class SourceFileBuilderMixin:
    """Locates a TFDS builder's code by its source file.

    TFDS's own lookup needs the `importlib_resources` backport, which this environment lacks.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))
