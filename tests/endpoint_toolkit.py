"""A stand-in for the Inference Endpoints toolkit's web service, written from its contract (the toolkit cannot be
installed here: its image is a container). Run it as the image runs the toolkit:

    HF_MODEL_ID=NAME/REPO HF_MODEL_DIR=/repository python -m uvicorn endpoint_toolkit:app --port 5000

The contract, from huggingface/huggingface-inference-toolkit 0.5.6 (webservice_starlette.py, handler.py, utils.py,
serialization/): the repo is downloaded into HF_MODEL_DIR with huggingface_hub's `snapshot_download` (the image's
version); its `handler.py` is imported from that folder (which goes first on sys.path) and `EndpointHandler(dir)` is
built once at start-up; a POST's body is decoded by its Content-Type: `image/*` to
`{"inputs": PIL.Image.open(body).convert("RGB")}`, `application/json` to the parsed object, which must hold `inputs`;
query parameters become `parameters`; the handler runs in a worker thread (requests share one handler); its answer is
sent as JSON, and any exception as HTTP 400 `{"error": str(exception)}`. Nothing of Pneumonia Detector is imported.
"""

import importlib.util
import io
import json
import os
import sys
from contextlib import asynccontextmanager
from pathlib import Path

from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

IMAGE_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/tiff", "image/bmp", "image/gif", "image/webp",
               "image/x-image"}
JSON_TYPES = {"application/json", "application/json; charset=UTF-8"}
handler = None


def load_handler() -> None:
    """Download the repo (when HF_MODEL_ID is set), then build its EndpointHandler once."""
    global handler
    from huggingface_hub import snapshot_download

    model_dir = Path(os.environ["HF_MODEL_DIR"])
    if os.environ.get("HF_MODEL_ID") and not any(model_dir.glob("*")):
        snapshot_download(os.environ["HF_MODEL_ID"], local_dir=model_dir, token=os.environ.get("HF_TOKEN"))
    spec = importlib.util.spec_from_file_location("handler", model_dir / "handler.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(model_dir))
    spec.loader.exec_module(module)
    handler = module.EndpointHandler(str(model_dir))


def request_data(content_type: str | None, body: bytes, query: dict) -> dict:
    if content_type in IMAGE_TYPES:
        data = {"inputs": Image.open(io.BytesIO(body)).convert("RGB")}
    elif content_type in JSON_TYPES:
        data = json.loads(body)
    else:
        raise ValueError(f'Content type "{content_type}" not supported.')
    if "inputs" not in data and "instances" not in data:
        raise ValueError(f"Body needs to provide a inputs key, received: {json.dumps(data)[:200]}")
    if query and "parameters" not in data:
        data["parameters"] = {key: value.lower() == "true" if value.lower() in ("true", "false") else value
                              for key, value in query.items()}
    return data


async def predict(request: Request):
    try:
        data = request_data(request.headers.get("content-type"), await request.body(), dict(request.query_params))
        return JSONResponse(await run_in_threadpool(handler, data))
    except Exception as error:  # the toolkit answers every failure alike
        return JSONResponse({"error": str(error)}, status_code=400)


async def health(request: Request):
    return PlainTextResponse("Ok")


@asynccontextmanager
async def lifespan(app):
    load_handler()  # at start-up, before the first request, as the toolkit's on_startup does
    yield


app = Starlette(routes=[Route("/", health, methods=["GET"]), Route("/health", health, methods=["GET"]),
                        Route("/", predict, methods=["POST"]), Route("/predict", predict, methods=["POST"])],
                lifespan=lifespan)
