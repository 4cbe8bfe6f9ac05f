"""Serve private mode's page from a folder with the headers the static Space sends, so that it is cross-origin
isolated and ONNX Runtime Web runs on every core (WebAssembly threads need SharedArrayBuffer, which browsers give
only to isolated pages):

    python -m trainer.push_space --static --local_dir site --hub_model_id NAME/REPO
    python -m trainer.static_server site --port 8000      # then open http://127.0.0.1:8000/

Any web server will do that sends CROSS_ORIGIN_ISOLATION's headers (nginx: `add_header`); one that does not still
serves a working page, on one thread.
"""

import argparse
import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# The static Space's `custom_headers` (its README front matter) and this server's: the page is isolated, and it may
# still be embedded elsewhere (resource policy cross-origin). The Hub's model files carry CORS headers, which is
# what an isolated page needs to fetch them.
CROSS_ORIGIN_ISOLATION = {"cross-origin-embedder-policy": "require-corp", "cross-origin-opener-policy": "same-origin",
                          "cross-origin-resource-policy": "cross-origin"}


class StaticSite(SimpleHTTPRequestHandler):
    """Files with their types (ES modules, WebAssembly), optionally with the isolation headers; no request log."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".wasm": "application/wasm"}
    headers_sent = CROSS_ORIGIN_ISOLATION

    def end_headers(self):
        for name, value in self.headers_sent.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, *args):
        pass


def site_server(folder: str | Path, port: int = 0, host: str = "127.0.0.1", isolated: bool = True) -> ThreadingHTTPServer:
    """A server for `folder` (not yet serving: call serve_forever); port 0 picks a free one."""
    handler = type("Site", (StaticSite,), {"headers_sent": CROSS_ORIGIN_ISOLATION if isolated else {}})
    return ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(folder)))


def serve_in_background(folder: str | Path, isolated: bool = True) -> ThreadingHTTPServer:
    """`folder` served on a free loopback port in a daemon thread; call `shutdown()` when done."""
    server = site_server(folder, isolated=isolated)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="The site written by push_space --static --local_dir.")
    parser.add_argument("--port", type=int, default=8000, help="Port to listen on (default %(default)s).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default %(default)s; 0.0.0.0 "
                                                            "for every interface of an intranet server).")
    args = parser.parse_args(argv)
    server = site_server(args.folder, args.port, args.host)
    print(f"Serving {args.folder} cross-origin isolated on http://{args.host}:{server.server_port}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
