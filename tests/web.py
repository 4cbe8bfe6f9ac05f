"""Browser-test helpers shared by tests and benchmarks (importing this module changes no environment variable)."""

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# Debian's Chromium, driven by Playwright (which never downloads a browser here).
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium); "
                                                             ".ci/run installs it, so CI always runs these tests")


class StaticFiles(SimpleHTTPRequestHandler):
    """A static web host (as a static Space is): files with their types, no request logging."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, *args):
        pass


def serve_folder(folder: str | Path) -> ThreadingHTTPServer:
    """`folder` served on a free loopback port, in a daemon thread; call `shutdown()` when done."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(StaticFiles, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
