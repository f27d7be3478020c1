"""`unclip serve`: the page, driven in Debian's Chromium, shows `generate`'s images for the
prompt, seed and settings typed in and `variations` of an uploaded image, pixel for pixel; it
fetches nothing from anywhere but the machine, and a new prompt, seed or guidance compiles
nothing new. Bad arguments are one line, before anything loads.

UNCLIP_SERVE_SCREENSHOT=docs/serve.png writes the page's screenshot there."""

import io
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# The flags that start Debian's Chromium headless in a container, with no traffic of its own.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,900",
)
COUNT = 4  # images per prompt, variations per image
WAIT_S = 120  # for a batch of images, compiled on its first run
# Gradio's queue calls pandas options that pandas 3 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def pipeline(pipeline_dir):
    from unclip_jax.pipelines.unclip import UnCLIP

    return UnCLIP.load(pipeline_dir, num_devices=1)


@pytest.fixture(scope="module")
def connections():
    """The addresses of every connection this process opens while the page runs."""
    opened = []
    connect = socket.socket.connect

    def recorded(sock: socket.socket, address) -> None:
        opened.append(address)
        return connect(sock, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", recorded)
        yield opened


@pytest.fixture(scope="module")
def page_url(connections, pipeline):
    from unclip_jax.commands import serve

    page = serve.build_page(pipeline)
    url = serve.launch(page, "127.0.0.1", free_port(), block=False)
    yield url
    page.close()


@pytest.fixture(scope="module")
def browser():
    """Chromium through chromedriver, logging the page's network requests; a skip naming the
    reason when it cannot start."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.TemporaryDirectory(prefix="chromium-")
    options.add_argument(f"--user-data-dir={profile.name}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except (WebDriverException, OSError) as error:
        profile.cleanup()
        message = " ".join(str(getattr(error, "msg", None) or error).split())
        reason = message.split("; For documentation")[0]
        pytest.skip(f"Chromium cannot start ({CHROMIUM}, {CHROMEDRIVER}): {reason}")
    yield driver
    driver.quit()
    profile.cleanup()


def element(browser, selector: str):
    """The element at a CSS `selector` once the page has drawn it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    located = expected_conditions.presence_of_element_located((By.CSS_SELECTOR, selector))
    return WebDriverWait(browser, 30).until(located)


def set_value(browser, selector: str, value: str) -> None:
    """Types `value` into the field at `selector` in place of what it held, then leaves it."""
    from selenium.webdriver.common.keys import Keys

    field = element(browser, selector)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(value, Keys.TAB)


def gallery_sources(browser, gallery: str) -> list[str]:
    """The addresses of the images a gallery shows, read at one instant."""
    script = "return [...document.querySelectorAll(arguments[0])].map((img) => img.src);"
    return browser.execute_script(script, f"#{gallery} .thumbnail-item img")


def shown_images(browser, gallery: str, count: int, previous: list[str]) -> list[np.ndarray]:
    """The `count` images of the gallery once it shows none of `previous` and the same twice in
    a row, read from the server as the browser got them (uint8 [H, W, 3] each)."""
    from selenium.webdriver.support.wait import WebDriverWait

    seen: list[list[str]] = [[]]

    def settled(driver) -> list[str] | None:
        found = gallery_sources(driver, gallery)
        ready = len(found) == count and not set(found) & set(previous) and found == seen[-1]
        seen.append(found)
        return found if ready else None

    urls = WebDriverWait(browser, WAIT_S, poll_frequency=0.2).until(settled)
    return [np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(u).read()))) for u in urls]


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def requested_hosts(browser) -> set[str]:
    """Hosts of every network request the browser made (pages, scripts, fonts, API calls,
    sockets)."""
    hosts = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
        elif message["method"] == "Network.webSocketCreated":
            url = message["params"]["url"]
        else:
            continue
        if urlparse(url).scheme in ("http", "https", "ws", "wss"):  # not data:, chrome:, ...
            hosts.add(urlparse(url).hostname)
    return hosts


def test_page_shows_generate_and_variations_images(
    browser, page_url, connections, pipeline, tmp_path
):
    from selenium.webdriver.common.by import By

    browser.get(page_url)
    previous: list[str] = []
    compiled = None
    for prompt, seed, guidance in [("a red circle", 7, 3.5), ("a large blue square", 123, 1.0)]:
        set_value(browser, "#prompt textarea", prompt)
        set_value(browser, "#seed input", str(seed))
        set_value(browser, "#count input[type=number]", str(COUNT))
        set_value(browser, "#decoder_guidance input[type=number]", str(guidance))
        set_value(browser, "#decoder_steps input[type=number]", "2")
        element(browser, "#generate").click()
        shown = shown_images(browser, "images", COUNT, previous)
        expected = pipeline.generate(
            [prompt], COUNT, seed=seed, decoder_guidance=guidance, decoder_steps=2
        )
        np.testing.assert_array_equal(np.stack(shown), expected)
        assert compiled in (None, pipeline.compiled_programs())
        compiled = pipeline.compiled_programs()
        previous = gallery_sources(browser, "images")
    if os.environ.get("UNCLIP_SERVE_SCREENSHOT"):
        browser.save_screenshot(os.environ["UNCLIP_SERVE_SCREENSHOT"])

    source = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(source).save(tmp_path / "source.png")
    browser.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Variations')]").click()
    element(browser, "#source input[type=file]").send_keys(str(tmp_path / "source.png"))
    element(browser, "#vary").click()
    shown = shown_images(browser, "varied", COUNT, [])  # at the last prompt's seed and settings
    expected = pipeline.variations(source, COUNT, seed=123, decoder_guidance=1.0, decoder_steps=2)
    np.testing.assert_array_equal(np.stack(shown), expected)

    assert requested_hosts(browser) == {"127.0.0.1"}
    remote = [a for a in connections if isinstance(a, tuple) and not is_loopback(a[0])]
    assert connections and not remote


def test_a_dalle_page_generates_and_has_no_variations(dalle_dir):
    from unclip_jax.commands import serve
    from unclip_jax.pipelines.dalle import Dalle

    pipeline = Dalle.load(dalle_dir, num_devices=1)
    assert [s.keyword for s in serve.settings(pipeline)] == ["temperature", "top_p"]
    assert not serve.can_vary(pipeline)
    page = serve.build_page(pipeline)
    labels = {getattr(block, "label", None) for block in page.blocks.values()}
    assert "Temperature" in labels and "Variations" not in labels
    (generate,) = {f.fn for f in page.fns.values()}  # the button's and the prompt's
    shown = generate("a red circle", 2, 5, 0.5, 0.9)
    expected = pipeline.generate(["a red circle"], 2, seed=5, temperature=0.5, top_p=0.9)
    np.testing.assert_array_equal(np.stack(shown), expected)


def test_a_taken_port_is_named(pipeline):
    from unclip_jax.commands import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"127.0.0.1:{port}: the port is taken"):
            serve.launch(serve.build_page(pipeline), "127.0.0.1", port, block=False)


def test_bad_arguments_are_one_line_before_loading(unclip, pipeline_dir, tmp_path):
    missing = tmp_path / "no_checkpoint"
    cases = [
        ((f"--checkpoint={missing}",), str(missing)),
        ((f"--checkpoint={pipeline_dir}", "--host=0.0.0.0"), "--host must be a loopback"),
        ((), "missing required flag(s): --checkpoint"),
    ]
    for args, message in cases:
        code, _, stderr = unclip("serve", *args)
        assert code != 0
        assert message in stderr, stderr
        assert "Traceback" not in stderr
        assert len(stderr.strip().splitlines()) == 1, stderr


def test_the_command_serves_a_page(pipeline_dir, tmp_path):
    """`unclip serve` as a user runs it: the page answers at its address until stopped."""
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [
        sys.executable,
        "-m",
        "unclip_jax.cli",
        "serve",
        f"--checkpoint={pipeline_dir}",
        f"--port={port}",
        f"--compilation_cache={tmp_path / 'cache'}",
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    deadline = threading.Timer(WAIT_S, server.kill)  # a silent server: its output ends
    deadline.start()
    try:
        lines = iter(server.stdout.readline, "")
        assert any(line.startswith(f"serving at http://127.0.0.1:{port}/") for line in lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as response:
            assert response.status == 200
    finally:
        deadline.cancel()
        server.terminate()
        server.wait(timeout=30)
