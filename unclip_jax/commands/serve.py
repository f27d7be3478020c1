"""`unclip serve --checkpoint DIR [--port 7860]`: a local web page (Gradio, the `serve` extra:
`pip install 'unclip_jax[serve]'`) over a pipeline: a prompt → a grid of images; an uploaded
image → its variations (unCLIP pipelines whose CLIP embeds images); decoder guidance and steps
(DALL·E: temperature and top-p), images per prompt and seed as sliders and a number.

The page listens on a loopback address only (default 127.0.0.1; it has no login: from another
machine, forward the port, `ssh -L 7860:127.0.0.1:7860 HOST`), and Gradio's analytics are off
(`GRADIO_ANALYTICS_ENABLED=False`): nothing leaves the machine. A new prompt, seed or setting
compiles nothing new; each bucket of images per prompt (1, 2, 4, 8) compiles once. Arguments and
the checkpoint directory are checked before anything is loaded.
"""

import dataclasses
import ipaddress
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import flags

from unclip_jax.commands import common
from unclip_jax.commands.usage import check_usage

FLAGS = flags.FLAGS
for _name in ("checkpoint", "dtype", "num_devices", "compilation_cache"):
    FLAGS.register_key_flag_for_module(__name__, FLAGS[_name])
flags.DEFINE_string(
    "host", "127.0.0.1", "Loopback address the page listens on (127.0.0.1, ::1 or localhost)."
)
flags.DEFINE_integer("port", 7860, "Port the page listens on.", lower_bound=1, upper_bound=65535)

MAX_IMAGES = 8  # images per prompt and variations per image: buckets 1, 2, 4, 8
QUEUE = "pipeline"  # every event of the page waits in one queue: the pipeline runs one at a time


def load_gradio() -> Any:
    """The `gradio` module, its analytics turned off before it is imported (Gradio reads the
    variable when it starts a page)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio

    return gradio


@dataclasses.dataclass(frozen=True)
class Setting:
    """A sampling keyword of the pipeline's `generate` (and `variations`), shown as a slider."""

    keyword: str
    label: str
    minimum: float
    maximum: float
    step: float
    value: float  # the pipeline's default
    integer: bool = False


def settings(pipeline: Any) -> list[Setting]:
    """The sliders of a pipeline: unCLIP's decoder guidance and steps; DALL·E's temperature and
    nucleus mass."""
    from unclip_jax.pipelines.dalle import Dalle

    if isinstance(pipeline, Dalle):
        temperature, top_p = pipeline.sampling["temperature"], pipeline.sampling["top_p"]
        return [
            Setting("temperature", "Temperature", 0.05, max(2.0, temperature), 0.05, temperature),
            Setting("top_p", "Top-p (nucleus mass)", 0.05, 1.0, 0.05, top_p),
        ]
    steps = pipeline.decoder.diffusion
    guidance = pipeline.decoder.default_guidance
    return [
        Setting("decoder_guidance", "Decoder guidance", 0.0, max(20.0, guidance), 0.5, guidance),
        Setting(
            "decoder_steps",
            "Decoder steps",
            getattr(steps, "min_steps", 1),
            steps.train_steps,
            1,
            steps.sample_steps,
            integer=True,
        ),
    ]


def can_vary(pipeline: Any) -> bool:
    """Whether the pipeline makes variations: unCLIP with a CLIP that embeds images."""
    return bool(getattr(pipeline, "embeds_images", False))


def _shown(action: Callable[..., np.ndarray]) -> Callable[..., list[np.ndarray]]:
    """An event handler: the pipeline's images [N, S, S, 3] as a gallery's list; a bad value as
    an error on the page and a truncated prompt as a notice there."""
    from unclip_jax.text.tokenizer import CaptionTruncatedWarning

    gr = load_gradio()

    def handler(*args: Any) -> list[np.ndarray]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CaptionTruncatedWarning)
            try:
                images = action(*args)
            except ValueError as error:
                raise gr.Error(str(error)) from None
        truncated = [w for w in caught if issubclass(w.category, CaptionTruncatedWarning)]
        for message in dict.fromkeys(str(w.message) for w in truncated):
            gr.Warning(message)
        return list(images)

    return handler


def build_page(pipeline: Any, checkpoint: str = "") -> Any:
    """The page (a `gr.Blocks`, not yet launched) over an `UnCLIP` or `Dalle` pipeline, headed
    by the `checkpoint` it was loaded from."""
    gr = load_gradio()
    sliders = settings(pipeline)

    def options(values: tuple) -> dict[str, Any]:
        return {
            s.keyword: int(v) if s.integer else float(v)
            for s, v in zip(sliders, values, strict=True)
        }

    def generate(prompt: str, n: float, seed: float, *values: float) -> np.ndarray:
        return pipeline.generate([prompt], int(n), seed=int(seed), **options(values))

    def vary(image: np.ndarray | None, n: float, seed: float, *values: float) -> np.ndarray:
        if image is None:
            raise ValueError("upload an image first")
        return pipeline.variations(image, int(n), seed=int(seed), **options(values))

    title = f"unclip — {checkpoint}" if checkpoint else "unclip"
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"## unclip `{checkpoint}`" if checkpoint else "## unclip")
        with gr.Row():
            count = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images", elem_id="count")
            seed = gr.Number(
                0, label="Seed", precision=0, minimum=0, maximum=common.MAX_SEED, elem_id="seed"
            )
            knobs = [
                gr.Slider(
                    s.minimum,
                    s.maximum,
                    value=s.value,
                    step=s.step,
                    label=s.label,
                    elem_id=s.keyword,
                )
                for s in sliders
            ]
        with gr.Tab("Text → images"):
            prompt = gr.Textbox(label="Prompt", elem_id="prompt")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
            grid = gr.Gallery(label="Images", format="png", columns=4, elem_id="images")
            inputs = [prompt, count, seed, *knobs]
            on_generate = _shown(generate)
            for event in (button.click, prompt.submit):
                event(on_generate, inputs, grid, concurrency_id=QUEUE)
        if can_vary(pipeline):
            with gr.Tab("Variations"):
                source = gr.Image(
                    label="Image",
                    type="numpy",
                    image_mode="RGB",
                    sources=["upload"],
                    elem_id="source",
                )
                vary_button = gr.Button("Variations", variant="primary", elem_id="vary")
                varied = gr.Gallery(label="Variations", format="png", columns=4, elem_id="varied")
                inputs = [source, count, seed, *knobs]
                vary_button.click(_shown(vary), inputs, varied, concurrency_id=QUEUE)
    return page


def launch(page: Any, host: str, port: int, block: bool = True) -> str:
    """Serves `page` at http://host:port, one request at a time; `block` waits until
    interrupted. Returns the page's address."""
    page.queue(default_concurrency_limit=1)
    try:
        _, url, _ = page.launch(
            server_name=host,
            server_port=port,
            share=False,
            show_error=True,
            quiet=True,
            prevent_thread_lock=True,
        )
    except OSError:  # Gradio's message names its own settings, not the command's flags
        raise ValueError(
            f"cannot listen on {host}:{port}: the port is taken or may not be opened; pick "
            "another --port"
        ) from None
    print(f"serving at {url} (Ctrl+C stops)", flush=True)
    if block:
        page.block_thread()
    return url


def check_host(host: str) -> str:
    """`host` if it is a loopback address; ValueError naming it otherwise."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"--host must be a loopback address (127.0.0.1, ::1 or localhost; the page has no "
            f"login: forward the port to reach it from elsewhere), got {host!r}"
        )
    return host


def main(argv: list[str]) -> None:
    check_usage(argv, "checkpoint", usage="unclip serve --checkpoint DIR [--port 7860]")
    host = check_host(FLAGS.host)
    kind = common.checkpoint_kind()
    load_gradio()  # without the serve extra: one line now, not after the pipeline has loaded
    from unclip_jax.pipelines import outputs

    outputs.enable_compilation_cache(FLAGS.compilation_cache)
    pipeline = common.load_pipeline(FLAGS.checkpoint, kind)
    launch(build_page(pipeline, FLAGS.checkpoint), host, FLAGS.port)
