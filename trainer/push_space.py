"""Deploy the Gradio demo as a Hugging Face Space that serves a model pushed with `trainer.push`.

    python -m trainer.push_space --space_id NAME/SPACE --hub_model_id NAME/REPO [--hub_token T] [--static]

Uploads what serving needs and nothing of training: app.py, the `serving` package, requirements-space.txt as the
Space's requirements.txt (no accelerate, datasets or evaluate), example images and a Space README with the Gradio
front matter; then sets the Space variable MODEL_ID to the model repo (app.py reads it).

With --static it deploys private mode instead: a static Space (`sdk: static`) holding the page in
private_mode/ (with its vendored ONNX Runtime Web) and model_repo.json, which names the Hub endpoint
and the model repo whose onnx/ files the page downloads and runs in the visitor's browser.
`--static --local_dir DIR` writes the same site to a folder instead, for a static web server of one's own.
"""

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, SpaceCard, SpaceCardData, get_hf_file_metadata, hf_hub_url

from serving.upload import example_files

from .options import HubOptions, add_options
from .push import PushError, push_failure
from .static_server import CROSS_ORIGIN_ISOLATION

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SPACE_REQUIREMENTS = REPO_ROOT / "requirements-space.txt"  # uploaded as the Space's requirements.txt
PRIVATE_MODE = REPO_ROOT / "private_mode"
PAGE_FILES = ["index.html", "app.js", "preprocessing.js", "dicom.js", "style.css", "vendor/ort.wasm.bundle.min.mjs",
              "vendor/ort-wasm-simd-threaded.wasm", "vendor/dicomParser.min.js", "vendor/README.md"]
SPACE_DESCRIPTION = """# Pneumonia Detector

Upload a frontal chest X-ray to get NORMAL / PNEUMONIA probabilities from [{model_id}](https://huggingface.co/{model_id}),
with the Grad-CAM evidence beside the radiograph; screen a folder of X-rays into a CSV; or call the prediction
from an agent: the Space is an MCP server (`/gradio_api/mcp/`).

**Research demo, not for clinical use.** Trained on pediatric radiographs from one hospital.
"""


STATIC_DESCRIPTION = """# Pneumonia Detector · private mode

Pick a frontal chest X-ray (JPEG, PNG or uncompressed DICOM) and the model
[{model_id}](https://huggingface.co/{model_id}) analyses it **inside your browser** with ONNX Runtime Web:
probabilities, the decision at the model's threshold, the not-an-X-ray check and the Grad-CAM overlay. The image
is never uploaded; the page downloads only itself and the model's `onnx/` files.

**Research demo, not for clinical use.** Trained on pediatric radiographs from one hospital.
"""


def gradio_version(requirements: Path = SPACE_REQUIREMENTS) -> str:
    """The gradio version pinned in the Space's requirements (the Space's sdk_version must equal it)."""
    match = re.search(r"^gradio(\[[\w,]+\])?==([\w.]+)\s*$", requirements.read_text(), re.MULTILINE)
    if match is None:
        raise PushError(f"{requirements} must pin gradio (gradio==X.Y.Z) for the Space's sdk_version.")
    return match.group(2)


def space_card(model_id: str) -> SpaceCard:
    data = SpaceCardData(
        title="Pneumonia Detector", sdk="gradio", sdk_version=gradio_version(), app_file="app.py",
        license="cc-by-4.0", models=[model_id], emoji="🫁", colorFrom="blue", colorTo="gray",
        short_description="Chest X-ray pneumonia classifier (research demo)", pinned=False)
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{SPACE_DESCRIPTION.format(model_id=model_id)}")


def static_space_card(model_id: str) -> SpaceCard:
    data = SpaceCardData(
        title="Pneumonia Detector (private mode)", sdk="static", app_file="index.html", license="cc-by-4.0",
        models=[model_id], emoji="🫁", colorFrom="green", colorTo="gray",
        short_description="Chest X-ray classifier that runs in your browser (research demo)", pinned=False,
        custom_headers=CROSS_ORIGIN_ISOLATION)  # isolated: ONNX Runtime Web may use every core
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{STATIC_DESCRIPTION.format(model_id=model_id)}")


def model_repo_settings(endpoint: str, model_id: str) -> bytes:
    """model_repo.json: where the page downloads the model's onnx/ files from."""
    return json.dumps({"endpoint": endpoint.rstrip("/"), "model_id": model_id, "revision": "main"}, indent=1).encode()


def origin(url: str) -> str:
    return "{0.scheme}://{0.netloc}".format(urlsplit(url))


def storage_origin(endpoint: str, model_id: str, token: str | None = None) -> str | None:
    """Where the Hub redirects the model's large files (its storage host), read from the one redirect of
    `resolve/main/onnx/model.onnx`; None when the Hub serves the file itself or cannot be asked."""
    url = hf_hub_url(model_id, "onnx/model.onnx", endpoint=endpoint)
    try:
        location = get_hf_file_metadata(url, token=token).location
    except Exception as error:  # the page can still be written: the Hub's own origin is always allowed
        logger.warning("Could not ask %s where it stores %s's files (%s); the page allows the Hub's origin only.",
                       endpoint, model_id, " ".join(str(error).split()))
        return None
    return origin(location) if origin(location) != origin(endpoint) else None


def model_hosts(endpoint: str, storage: str | None = None) -> str:
    """The origins the page may fetch from besides its own: the Hub and its file storage host (large files redirect
    there; on huggingface.co to *.hf.co / *.huggingface.co)."""
    hosts = [origin(endpoint)] + ([storage] if storage else [])
    if origin(endpoint) == "https://huggingface.co":
        hosts += ["https://*.huggingface.co", "https://*.hf.co"]
    return " ".join(dict.fromkeys(hosts))


def page_file(name: str, hosts: str) -> bytes:
    """A page file as deployed: index.html's Content-Security-Policy names the origins the model comes from."""
    content = (PRIVATE_MODE / name).read_bytes()
    return content.replace(b"MODEL_HOSTS", hosts.encode()) if name == "index.html" else content


def static_site(model_id: str, endpoint: str, token: str | None = None) -> dict[str, bytes]:
    """{path: content} of the private-mode site: the page, its settings and its Space card."""
    hosts = model_hosts(endpoint, storage_origin(endpoint, model_id, token))
    return ({name: page_file(name, hosts) for name in PAGE_FILES}
            | {"model_repo.json": model_repo_settings(endpoint, model_id),
               "README.md": str(static_space_card(model_id)).encode()})


def write_static_site(folder: str | Path, model_id: str, endpoint: str, token: str | None = None) -> Path:
    """The private-mode site written to `folder`, for any static web server (an intranet one included)."""
    folder = Path(folder)
    for name, content in static_site(model_id, endpoint, token).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


def space_files() -> list[Path]:
    """Repository files the Space needs besides its requirements: the app, the serving package and example X-rays."""
    package = [p for p in (REPO_ROOT / "serving").rglob("*") if p.is_file() and "__pycache__" not in p.parts
               and p.suffix != ".pyi"]
    examples = [Path(p) for p in example_files()]
    return [REPO_ROOT / "app.py", *package, *examples]


def gradio_space_operations(model_id: str) -> list[CommitOperationAdd]:
    operations = [CommitOperationAdd(str(p.relative_to(REPO_ROOT)), p) for p in space_files()]
    return [*operations, CommitOperationAdd("requirements.txt", SPACE_REQUIREMENTS),
            CommitOperationAdd("README.md", str(space_card(model_id)).encode())]


def push_space(space_id: str, model_id: str, token: str | None = None, static: bool = False,
               private: bool = False) -> CommitInfo:
    """Create or update the Space (the Gradio app, or with `static` the private-mode page) serving `model_id`."""
    api = HfApi(token=token)
    operations = ([CommitOperationAdd(name, content) for name, content in static_site(model_id, api.endpoint, token).items()]
                  if static else gradio_space_operations(model_id))
    try:
        api.create_repo(space_id, repo_type="space", space_sdk="static" if static else "gradio", private=private,
                        exist_ok=True)
        commit = api.create_commit(space_id, operations, repo_type="space", commit_message="Deploy Pneumonia Detector")
        if not static:
            api.add_space_variable(space_id, "MODEL_ID", model_id, description="Model repo the app loads")
        return commit
    except Exception as error:  # network, auth, offline mode and server errors all end the same way
        raise PushError(f"Space {push_failure(error, space_id, api.endpoint)} Nothing was changed on this machine; "
                        "run the same command again once that is fixed.") from error


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space_id", help="Space repo, NAME/SPACE.")
    parser.add_argument("--hub_model_id", required=True, help="Model repo the Space serves, NAME/REPO.")
    add_options(parser, HubOptions)
    parser.add_argument("--static", action="store_true",
                        help="Deploy private mode: a static page that runs the model in the visitor's browser.")
    parser.add_argument("--local_dir", help="With --static: write the page to this folder instead of pushing a Space "
                                            "(serve it with any static web server).")
    args = parser.parse_args(argv)
    if args.local_dir and args.static:
        folder = write_static_site(args.local_dir, args.hub_model_id, HfApi().endpoint, args.hub_token)
        print(f"Wrote private mode for {args.hub_model_id} to {folder}; serve it cross-origin isolated (every core) "
              f"with: python -m trainer.static_server {folder}")
        return
    if not args.space_id:
        parser.error("--space_id is required (or --static --local_dir DIR to write the page to a folder)")
    try:
        commit = push_space(args.space_id, args.hub_model_id, args.hub_token, args.static, args.hub_private_repo)
    except PushError as error:
        sys.exit(f"error: {error}")
    print(f"Deployed the Space {commit.repo_url} serving {args.hub_model_id}")


if __name__ == "__main__":
    main()
