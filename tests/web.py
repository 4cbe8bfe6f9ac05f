"""Browser-test helpers shared by tests and benchmarks (importing this module changes no environment variable)."""

import shutil
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from trainer.static_server import serve_in_background

# Debian's Chromium, driven by Playwright (which never downloads a browser here).
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium); "
                                                             ".ci/run installs it, so CI always runs these tests")


def serve_folder(folder: str | Path) -> ThreadingHTTPServer:
    """`folder` served as a plain static web host (no cross-origin isolation headers) on a free loopback port, in a
    daemon thread; call `shutdown()` when done."""
    return serve_in_background(folder, isolated=False)
