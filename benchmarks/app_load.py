"""Load test of the Gradio app: N concurrent gradio_client users vs one user, in the same run.

Starts `python app.py` on a free loopback port (or uses --url), sends real bundled X-rays to
/predict and prints errors, p50/p95 latency and throughput for 1 client and for N clients.

    python benchmarks/app_load.py --model outputs/best --clients 16 --requests 4
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gradio_client import Client, handle_file

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGES = sorted((REPO_ROOT / "sample_data" / "chest_xray" / "test").glob("*/*.jpeg"))


def start_app(model: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MODEL_ID": model, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(360):
        try:
            urllib.request.urlopen(url, timeout=2)
            return process, url
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.5)
    process.kill()
    raise SystemExit("app.py did not start; check MODEL_ID / --model")


def one_user(url: str, requests: int, offset: int) -> tuple[list[float], int]:
    """Latencies (s) of `requests` predictions and the number of failed ones."""
    client = Client(url, verbose=False)
    latencies, errors = [], 0
    for i in range(requests):
        image = IMAGES[(offset + i) % len(IMAGES)]
        started = time.perf_counter()
        try:
            client.predict(handle_file(str(image)), api_name="/predict")
            latencies.append(time.perf_counter() - started)
        except Exception:  # count every failure, whatever its type
            errors += 1
    return latencies, errors


def run(url: str, clients: int, requests: int) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(lambda c: one_user(url, requests, c * requests), range(clients)))
    wall = time.perf_counter() - started
    latencies = sorted(x for latency_list, _ in outcomes for x in latency_list)
    return {"clients": clients, "requests": clients * requests, "errors": sum(e for _, e in outcomes),
            "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
            "throughput": len(latencies) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/best", help="MODEL_ID for the app (folder or Hub repo id).")
    parser.add_argument("--url", default=None, help="Use an app already running here instead of starting one.")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients in the loaded run.")
    parser.add_argument("--requests", type=int, default=4, help="Requests per client.")
    args = parser.parse_args()

    process, url = (None, args.url) if args.url else start_app(args.model)
    try:
        one_user(url, 2, 0)  # warm-up
        single = run(url, 1, args.clients * args.requests // 4 or 1)
        loaded = run(url, args.clients, args.requests)
    finally:
        if process:
            process.terminate()
    print(f"{'clients':>8}{'requests':>10}{'errors':>8}{'p50 ms':>10}{'p95 ms':>10}{'req/s':>8}")
    for row in (single, loaded):
        print(f"{row['clients']:>8}{row['requests']:>10}{row['errors']:>8}{row['p50_ms']:>10.0f}{row['p95_ms']:>10.0f}"
              f"{row['throughput']:>8.2f}")
    print(f"throughput ratio {args.clients} clients / 1 client: {loaded['throughput'] / single['throughput']:.2f}x; "
          f"p50 latency ratio: {loaded['p50_ms'] / single['p50_ms']:.2f}x")


if __name__ == "__main__":
    main()
