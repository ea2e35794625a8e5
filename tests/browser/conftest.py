"""Fixtures of the console's browser tests: a running service with a key of each role, and Debian's
Chromium driven by Playwright (the PyPI package; its own browser download cannot run here).

    def test_x(console: Console, page: Page) -> None:
        sign_in(page, console, "alice")
        ...
        shot(page, "queue")

The service is `antifraud serve` on loopback (engine.stack.ServiceStack, with its sink) over a copy of the
rules with one more rule, `big_amount_review`: payments over 9,000 are reviewed, so a test makes a
review case by scoring one. One webhook endpoint subscribes to `decision.review`; its receiver, on
loopback, answers 410 Gone, so each review becomes a dead letter on the webhooks page.
Screenshots go to reports/browser/ (git-ignored), or to AF_SCREENSHOTS (`make console-screenshots`:
docs/console/), as 256-colour PNGs of the viewport.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from console_helpers import rules_with_review
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from antifraud.engine.settings import ROOT
from antifraud.engine.stack import ServiceStack
from antifraud.engine.webhooks.config import new_secret

CHROMIUM = Path(os.environ.get("ANTIFRAUD_CHROMIUM", "/usr/bin/chromium"))
# without the background-networking flags Chromium keeps calling hosts this closed network refuses
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(os.environ.get("AF_SCREENSHOTS", ROOT / "reports" / "browser"))
VIEWPORT = {"width": 1280, "height": 800}
# a busy machine (two cores shared by the suite, the service and Chromium) can take seconds per page
expect.set_options(timeout=15_000)
#: the stack's keys, by name
KEYS = {"checkout": "scorer", "alice": "analyst", "ops": "admin"}


@dataclass(frozen=True)
class Console:
    """The running service: its console's address, its API keys by name, an API client."""

    url: str  # http://127.0.0.1:<port>
    keys: dict[str, str]
    stack: ServiceStack

    def api(self, key_name: str = "checkout") -> httpx.Client:
        """An API client with the named key."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.keys[key_name]}"})


class _Gone(BaseHTTPRequestHandler):
    """A webhook receiver whose endpoint is retired: 410 Gone to every POST."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(410)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture(scope="session")
def gone_endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An endpoints file naming one endpoint, on a loopback receiver that answers 410 Gone."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gone)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = {
        "name": "retired-bus",
        "url": f"http://127.0.0.1:{server.server_address[1]}/hooks",
        "events": ["decision.review"],
        "secret": new_secret(),
    }
    path = tmp_path_factory.mktemp("webhooks") / "webhooks.yaml"
    path.write_text(yaml.safe_dump([endpoint]))
    path.chmod(0o600)
    yield path
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def console(tmp_path_factory: pytest.TempPathFactory, gone_endpoints: Path) -> Iterator[Console]:
    """The service, started once for the browser tests."""
    rules = rules_with_review(tmp_path_factory.mktemp("rules"))
    env = {
        "ANTIFRAUD_PAN_SECRET": "browser-tests-pan-secret-0123456789",
        "ANTIFRAUD_WEBHOOKS": str(gone_endpoints),
        # every test signs in from 127.0.0.1, some twice: more than the default 10 a minute in a fast run
        "ANTIFRAUD_CONSOLE_SIGNIN_PER_MINUTE": "1000",
    }
    with ServiceStack(keys=KEYS, rules_dir=rules, env=env, prefix="antifraud-browser-") as stack:
        yield Console(f"http://127.0.0.1:{stack.port}", stack.keys, stack)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless."""
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install chromium`, or set ANTIFRAUD_CHROMIUM")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh browser context (no cookies from another test)."""
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def sign_in(page: Page, console: Console, key_name: str) -> None:
    """Sign in through the form as a person would: type the key, press the button."""
    page.goto(f"{console.url}/console/signin")
    page.get_by_label("API key").fill(console.keys[key_name])
    with page.expect_navigation():  # the form's answer: the queue, or the form again with the refusal
        page.get_by_role("button", name="Sign in").click()


def shot(page: Page, name: str) -> Path:
    """Save a screenshot of the viewport as <SCREENSHOTS>/<name>.png, in 256 colours: a page's few
    colours and anti-aliased text look the same, and the file is about 2.5 times smaller (the docs'
    PNGs stay under 150 KB)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    with Image.open(path) as taken:
        paletted = taken.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    paletted.save(path, optimize=True)
    return path
