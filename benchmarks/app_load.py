"""Load test of the Gradio app: N concurrent gradio_client users vs one user, in the same run.

Starts `python app.py` on a free loopback port (or uses --url), sends real bundled X-rays to
/predict and prints errors, p50/p95 latency, throughput and CPU per request (the app's process and
this one's) for 1 client and for N clients. Each request uploads an X-ray and fetches its Grad-CAM overlay;
every `--batch_every`-th request of a client screens 4 X-rays at once (/screen) and fetches the CSV.

`--client gradio_client` (default) is what Python users run; it spends about 230 ms of CPU per request
in this process, on the same cores as the app. `--client http` speaks Gradio's REST API directly
(upload, /gradio_api/call/predict, its event stream, the heatmap's URL) with httpx, at ~15 ms of CPU a
request, so the numbers are the app's own.

    python benchmarks/app_load.py --model outputs/best --clients 16 --requests 4 [--client http]
"""

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from gradio_client import Client, handle_file

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from serving.heatmap import HEATMAP_OPACITY  # noqa: E402

IMAGES = sorted((REPO_ROOT / "sample_data" / "chest_xray" / "test").glob("*/*.jpeg"))


def start_app(model: str, app_file: str | Path = "app.py") -> tuple[subprocess.Popen, str]:
    """`python app_file` serving `model` on a free loopback port (the repository's serving package on the path)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MODEL_ID": model, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, str(app_file)], cwd=REPO_ROOT, env=env,
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


class GradioClientUser:
    """One visitor through gradio_client, as a Python user calls the Space."""

    def __init__(self, url: str):
        self.client = Client(url, verbose=False)

    def predict(self, image: Path) -> None:
        self.client.predict(handle_file(str(image)), api_name="/predict")

    def screen(self, images: list[Path]) -> None:
        table, _ = self.client.predict([handle_file(str(image)) for image in images], api_name="/screen")
        if len(table["data"]) != len(images):
            raise RuntimeError(f"{len(table['data'])} rows for {len(images)} images")

    def close(self) -> None:
        self.client.close()


class HttpUser:
    """One visitor through Gradio's REST API, with httpx: upload, call, read the event stream, fetch the heatmap."""

    def __init__(self, url: str):
        self.url, self.http = url, httpx.Client(timeout=120)

    def upload(self, images: list[Path]) -> list[dict]:
        files = [("files", (image.name, image.read_bytes())) for image in images]
        paths = self.http.post(f"{self.url}gradio_api/upload", files=files).raise_for_status().json()
        return [{"path": path, "meta": {"_type": "gradio.FileData"}} for path in paths]

    def call(self, endpoint: str, data: list) -> list:
        event = self.http.post(f"{self.url}gradio_api/call/{endpoint}", json={"data": data}).raise_for_status().json()
        with self.http.stream("GET", f"{self.url}gradio_api/call/{endpoint}/{event['event_id']}") as stream:
            lines = list(stream.iter_lines())
        if "event: complete" not in lines:
            raise RuntimeError(f"the app answered {lines[-2:]}")
        return json.loads(lines[lines.index("event: complete") + 1].removeprefix("data:"))

    def predict(self, image: Path) -> None:
        outputs = self.call("predict", [*self.upload([image]), HEATMAP_OPACITY])
        self.http.get(outputs[3]["url"]).raise_for_status()  # the overlay PNG

    def screen(self, images: list[Path]) -> None:
        outputs = self.call("screen", [self.upload(images)])
        self.http.get(outputs[1]["url"]).raise_for_status()  # the CSV

    def close(self) -> None:
        self.http.close()


USERS = {"gradio_client": GradioClientUser, "http": HttpUser}


def one_user(user_class, url: str, requests: int, offset: int, batch_every: int) -> tuple[list[float], int]:
    """Latencies (s) of `requests` requests (every `batch_every`-th one a screening of 4 X-rays) and the
    number of failed ones."""
    user = user_class(url)
    latencies, errors = [], 0
    for i in range(requests):
        started = time.perf_counter()
        try:
            if batch_every and i % batch_every == batch_every - 1:
                user.screen([IMAGES[(offset + i + k) % len(IMAGES)] for k in range(4)])
            else:
                user.predict(IMAGES[(offset + i) % len(IMAGES)])
            latencies.append(time.perf_counter() - started)
        except Exception:  # count every failure, whatever its type
            errors += 1
    user.close()
    return latencies, errors


def cpu_seconds(pid: int | None) -> float:
    """CPU time used so far by process `pid` (user + system), or by this process when None."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(user_class, url: str, clients: int, requests: int, app_pid: int | None, batch_every: int) -> dict:
    started, app_cpu, own_cpu = time.perf_counter(), cpu_seconds(app_pid) if app_pid else 0.0, cpu_seconds(None)
    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(lambda c: one_user(user_class, url, requests, c * requests, batch_every), range(clients)))
    wall = time.perf_counter() - started
    latencies = sorted(x for latency_list, _ in outcomes for x in latency_list)
    done = len(latencies)
    return {"clients": clients, "requests": clients * requests, "errors": sum(e for _, e in outcomes),
            "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * latencies[int(0.95 * (done - 1))],
            "throughput": done / wall,
            "app_cpu_ms": 1000 * (cpu_seconds(app_pid) - app_cpu) / done if app_pid else float("nan"),
            "client_cpu_ms": 1000 * (cpu_seconds(None) - own_cpu) / done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/best", help="MODEL_ID for the app (folder or Hub repo id).")
    parser.add_argument("--url", default=None, help="Use an app already running here instead of starting one.")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients in the loaded run.")
    parser.add_argument("--requests", type=int, default=4, help="Requests per client.")
    parser.add_argument("--client", choices=sorted(USERS), default="gradio_client",
                        help="Load generator: gradio_client (what Python users run) or http (light, the app's own cost).")
    parser.add_argument("--batch_every", type=int, default=4,
                        help="Every N-th request of a client screens 4 X-rays (/screen); 0: single X-rays only.")
    args = parser.parse_args()

    user_class = USERS[args.client]
    process, url = (None, args.url) if args.url else start_app(args.model)
    app_pid = process.pid if process else None
    try:
        one_user(user_class, url, 2, 0, 2)  # warm-up, both endpoints
        single = run(user_class, url, 1, args.clients * args.requests // 4 or 1, app_pid, args.batch_every)
        loaded = run(user_class, url, args.clients, args.requests, app_pid, args.batch_every)
    finally:
        if process:
            process.terminate()
    print(f"client: {args.client}")
    print(f"{'clients':>8}{'requests':>10}{'errors':>8}{'p50 ms':>10}{'p95 ms':>10}{'req/s':>8}{'app CPU ms/req':>16}"
          f"{'client CPU ms/req':>19}")
    for row in (single, loaded):
        print(f"{row['clients']:>8}{row['requests']:>10}{row['errors']:>8}{row['p50_ms']:>10.0f}{row['p95_ms']:>10.0f}"
              f"{row['throughput']:>8.2f}{row['app_cpu_ms']:>16.0f}{row['client_cpu_ms']:>19.0f}")
    print(f"throughput ratio {args.clients} clients / 1 client: {loaded['throughput'] / single['throughput']:.2f}x; "
          f"p50 latency ratio: {loaded['p50_ms'] / single['p50_ms']:.2f}x")


if __name__ == "__main__":
    main()
