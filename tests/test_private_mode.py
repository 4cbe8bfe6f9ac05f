"""Private mode: the ONNX graph that trainer.push adds to the model repo, run by ONNX Runtime (Python) and by the
static page in Debian's Chromium, gives the Predictor's answers; the page sends the image nowhere."""

import base64
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from huggingface_hub import HfApi, SpaceCard, hf_hub_download, snapshot_download
from PIL import Image
from pydicom.data import get_testdata_file

from dataset_scripts.non_xray_images import non_xray_images
from serving.images import InputImageError, read_image
from tests.app_inputs import dicom_variants, grey_xray, with_lut, write_dicom
from tests.conftest import sample_images
from tests.hub_server import TOKEN, USER
from tests.web import needs_chromium, serve_folder
from trainer.push_space import PAGE_FILES, PRIVATE_MODE, model_hosts, page_file, push_space
from trainer.push_space import main as push_space_main
from trainer.static_server import CROSS_ORIGIN_ISOLATION, serve_in_background

SPACE_ID = f"{USER}/private-mode"
NON_XRAYS = ["skimage_astronaut", "skimage_coffee", "rendered_document"]  # 512×512, 600×400, 600×800: all resized


@pytest.fixture(scope="module")
def test_images(tmp_path_factory):
    """10 real X-rays (8 sample JPEGs; 2 re-encoded as PNG at other sizes, so the page resizes them) and 3 non-X-rays."""
    folder = tmp_path_factory.mktemp("private-images")
    xrays = sample_images("test", "NORMAL", 4) + sample_images("test", "PNEUMONIA", 6)
    for path, size in zip(xrays[-2:], [(640, 512), (180, 150)]):
        Image.open(path).convert("L").resize(size, Image.BICUBIC).save(folder / f"{path.stem}_{size[0]}.png")
    for name in NON_XRAYS:
        non_xray_images()[name].save(folder / f"{name}.png")
    return xrays[:8] + sorted(folder.glob("*_*.png")) + [folder / f"{name}.png" for name in NON_XRAYS]


def test_the_pushed_graph_gives_the_predictors_answers(pushed_served_model, served_model, served_predictor,
                                                       test_images):
    """ONNX Runtime (Python) on the pushed onnx/model.onnx: probabilities, decision, guard and Grad-CAM as the
    Predictor computes them."""
    session = onnxruntime.InferenceSession(hf_hub_download(pushed_served_model, "onnx/model.onnx", token=TOKEN))
    for path in test_images:
        expected = served_predictor.analyse(path, heatmap=True)
        probabilities, decision, distance, looks_like_xray, heatmap = session.run(
            None, {"pixel_values": served_model.transform(served_predictor.read(path)).unsqueeze(0).numpy()})
        assert probabilities[0] == pytest.approx([expected.probabilities[label] for label in served_model.labels], abs=1e-5)
        at_threshold = served_predictor.decide(expected.probabilities["PNEUMONIA"])  # the page answers the refusal
        assert served_model.labels[decision[0]] == at_threshold and bool(looks_like_xray[0]) == expected.looks_like_xray
        assert distance[0] == pytest.approx(expected.guard_distance, rel=1e-4)
        if expected.looks_like_xray:  # a refused image gets no heatmap
            np.testing.assert_allclose(heatmap[0], expected.heatmap, rtol=1e-4, atol=1e-5 * expected.heatmap.max())


@pytest.fixture(scope="module")
def page_url(pushed_served_model, tmp_path_factory):
    """The static Space deployed for the pushed model, served from a local static server."""
    push_space(SPACE_ID, pushed_served_model, token=TOKEN, static=True)
    site = snapshot_download(SPACE_ID, repo_type="space", token=TOKEN,
                             local_dir=tmp_path_factory.mktemp("private-space"))
    server = serve_folder(site)
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


def hub_endpoint(hub) -> str:
    return f"http://127.0.0.1:{hub.server_port}"


def storage_origin(hub) -> str:
    """The test Hub's storage host, where `resolve/` redirects large files such as onnx/model.onnx."""
    return f"http://127.0.0.1:{hub.storage.server_port}"


def test_the_site_written_to_a_folder_is_the_page_with_the_hub_and_the_model_filled_in(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    push_space_main(["--static", "--local_dir", "site", "--hub_model_id", "someone/model"])
    assert "python -m trainer.static_server site" in capsys.readouterr().out
    site, endpoint = tmp_path / "site", HfApi().endpoint
    for name in PAGE_FILES:  # the page as in private_mode/, its CSP naming the Hub (the repo does not exist there)
        expected = (PRIVATE_MODE / name).read_bytes()
        if name == "index.html":
            expected = expected.replace(b"MODEL_HOSTS", endpoint.encode())
        assert (site / name).read_bytes() == expected, name
    assert json.loads((site / "model_repo.json").read_text()) == {"endpoint": endpoint, "model_id": "someone/model",
                                                                  "revision": "main"}
    assert SpaceCard.load(site / "README.md").data.models == ["someone/model"]
    with pytest.raises(SystemExit):
        push_space_main(["--hub_model_id", "someone/model"])  # neither a Space nor a folder
    assert "--space_id is required" in capsys.readouterr().err


def test_the_page_may_fetch_only_from_the_hub_and_its_file_hosts():
    assert model_hosts("https://huggingface.co/") == "https://huggingface.co https://*.huggingface.co https://*.hf.co"
    assert (model_hosts("https://huggingface.co/", "https://cas-bridge.xethub.hf.co")
            == "https://huggingface.co https://cas-bridge.xethub.hf.co https://*.huggingface.co https://*.hf.co")
    assert model_hosts("http://127.0.0.1:8765") == "http://127.0.0.1:8765"
    assert model_hosts("http://127.0.0.1:8765", "http://127.0.0.1:8766") == "http://127.0.0.1:8765 http://127.0.0.1:8766"


def test_the_static_space_is_the_page_its_runtime_and_where_the_model_is(hub, pushed_served_model, tmp_path):
    push_space(SPACE_ID, pushed_served_model, token=TOKEN, static=True)
    site = Path(snapshot_download(SPACE_ID, repo_type="space", token=TOKEN, local_dir=tmp_path))
    card = SpaceCard.load(site / "README.md")
    assert card.data.sdk == "static" and card.data.app_file == "index.html" and card.data.models == [pushed_served_model]
    assert card.data.custom_headers == CROSS_ORIGIN_ISOLATION  # the Space is isolated: every core for the model
    assert "not for clinical use" in card.text
    assert json.loads((site / "model_repo.json").read_text()) == {
        "endpoint": hub_endpoint(hub), "model_id": pushed_served_model, "revision": "main"}
    hosts = f"{hub_endpoint(hub)} {storage_origin(hub)}"  # the storage host, read from the redirect at deploy time
    for name in PAGE_FILES:  # the vendored runtime included: the page loads nothing from a CDN
        assert (site / name).read_bytes() == page_file(name, hosts), name
    page_code = "".join((PRIVATE_MODE / name).read_text() for name in ("index.html", "app.js", "preprocessing.js",
                                                                        "dicom.js"))
    assert "http:" not in page_code and "https:" not in page_code  # no absolute URL: own files + model_repo.json
    assert f"connect-src 'self' {hosts};" in (site / "index.html").read_text()


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="no Node.js (the machines and CI have Node 20)")
def test_the_pages_dicom_reader_renders_the_python_readers_pixels_and_refuses_what_it_cannot(tmp_path):
    """private_mode/dicom.js with the vendored dicom-parser, run by Node on the DICOM files the Python tests use and
    more: every bit depth and photometric, a window, a VOI LUT table (preferred to the window, as pydicom does), a
    Modality LUT table before a window, a sigmoid window, a rescale intercept, pydicom's real signed CT slice.
    Exactly the Python reader's grey levels; a compressed file (RLE, which Python decodes) and a file without pixels
    get the reason."""
    grey = grey_xray().astype(np.uint16)
    files = {**dicom_variants(tmp_path),
             "voi_lut": with_lut(write_dicom(tmp_path / "lut.dcm", grey * 16, bits_stored=12, window=(100, 50)),
                                 "VOILUTSequence", (np.sqrt(np.arange(4096) / 4095) * 4095).astype(np.uint16)),
             "modality_lut": with_lut(write_dicom(tmp_path / "mlut.dcm", grey * 16, bits_stored=12,
                                                  window=(16000, 30000)),
                                      "ModalityLUTSequence", (np.arange(4096)[::-1] * 8).astype(np.uint16)),
             "sigmoid": write_dicom(tmp_path / "sigmoid.dcm", grey * 16, bits_stored=12, window=(1500, 2000),
                                    VOILUTFunction="SIGMOID"),
             "rescaled": write_dicom(tmp_path / "rescaled.dcm", grey * 16, bits_stored=12, window=(-500, 3000),
                                     RescaleSlope=1, RescaleIntercept=-1024),
             "ct_slice": Path(get_testdata_file("CT_small.dcm")),
             "rle": Path(get_testdata_file("MR_small_RLE.dcm")), "no_pixels": write_dicom(tmp_path / "none.dcm", None)}
    script, parser = tmp_path / "render.mjs", tmp_path / "dicomParser.cjs"  # the vendored file, read as CommonJS
    shutil.copy(PRIVATE_MODE / "vendor" / "dicomParser.min.js", parser)
    script.write_text(
        "import fs from 'fs';\nimport { createRequire } from 'module';\n"
        f"globalThis.dicomParser = createRequire(import.meta.url)({str(parser)!r});\n"
        f"const {{ renderDicom }} = await import({(PRIVATE_MODE / 'dicom.js').as_uri()!r});\n"
        "const answers = {};\n"
        "for (const [name, path] of Object.entries(JSON.parse(process.argv[2]))) {\n"
        "  try { const { rgba, width, height } = renderDicom(new Uint8Array(fs.readFileSync(path)));\n"
        "    answers[name] = { width, height, grey: Array.from(rgba.filter((_, i) => i % 4 === 0)) }; }\n"
        "  catch (error) { answers[name] = { error: error.message }; }\n"
        "}\nconsole.log(JSON.stringify(answers));\n")
    result = subprocess.run([NODE, str(script), json.dumps({name: str(path) for name, path in files.items()})],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    for name, path in files.items():
        if name in ("rle", "no_pixels"):
            continue
        python = np.asarray(read_image(path).convert("L"), dtype=int)
        assert "error" not in answers[name], (name, answers[name])
        assert (answers[name]["height"], answers[name]["width"]) == python.shape, name
        assert np.array_equal(np.array(answers[name]["grey"]).reshape(python.shape), python), name
    assert "compressed (transfer syntax 1.2.840.10008.1.2.5)" in answers["rle"]["error"]
    assert answers["no_pixels"]["error"] == "This DICOM file has no pixel data (no image inside)."
    with pytest.raises(InputImageError, match="no pixel data \\(no image inside\\)"):  # the Python reader's message
        read_image(files["no_pixels"])


def bad_files(folder) -> dict[str, str]:
    """Files the page must refuse (as every entry point does), written to `folder`: {name: what the page says}."""
    (folder / "damaged.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    Image.new("L", (20, 20)).save(folder / "tiny.png")
    return {"damaged.jpeg": "could not be read as a JPEG, PNG or DICOM image", "tiny.png": "only 20x20 pixels"}


@pytest.mark.browser
@needs_chromium
def test_the_page_gives_pythons_answers_in_the_browser_and_sends_the_images_nowhere(page_url, served_predictor,
                                                                                        test_images, hub, browser,
                                                                                        pushed_served_model, tmp_path):
    """10 X-rays and 3 non-X-rays picked through the page's file input: P(PNEUMONIA) within 1e-5 of Python's
    (PneumoniaClassifier.predict), the same decision and not-an-X-ray verdict, the same overlay. Unreadable and
    tiny files get a reason, as in the Space."""
    requests, other_server = [], serve_folder(tmp_path)
    elsewhere = f"http://127.0.0.1:{other_server.server_port}"
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        page.on("request", lambda request: requests.append(request.url))
        page.goto(page_url)
        page.locator("#xray:enabled, #status.error").first.wait_for(timeout=120_000)  # ready, or why not
        assert page.locator("#status").inner_text().startswith("Ready."), page.locator("#status").inner_text()
        assert page.locator("#privacy").inner_text().startswith("Nothing is uploaded.")
        # Served without the isolation headers (a plain web server): one thread, and it works
        assert not page.evaluate("self.crossOriginIsolated") and "on 1 thread(s)" in page.locator("#model").inner_text()
        for name, problem in bad_files(tmp_path).items():  # refused with a reason; the page keeps working
            page.locator("#xray").set_input_files(str(tmp_path / name))
            page.locator("#status.error", has_text=problem).wait_for(timeout=30_000)
            assert page.locator("#result").is_hidden()
        # The browser refuses to send anything elsewhere (the page's Content-Security-Policy): a request to another
        # server that is up, which would otherwise go out (no-cors), fails.
        assert page.evaluate(f"fetch('{elsewhere}/upload', {{mode: 'no-cors'}}).then(() => 'sent', () => 'blocked')") \
            == "blocked"
        answers, overlay = {}, None
        for path in test_images:
            page.locator("#xray").set_input_files(str(path))
            result = page.locator(f'#result[data-file="{path.name}"]')
            result.wait_for(timeout=60_000)
            answers[path] = result.evaluate("element => ({...element.dataset})")
            answers[path]["text"] = page.locator("#answer").inner_text()
            if path == test_images[0]:
                overlay = page.locator("#overlay").evaluate("canvas => canvas.toDataURL('image/png')")
    finally:
        page.close()
    other_server.shutdown()

    differences = []
    for path, answer in answers.items():
        expected = served_predictor.analyse(path, heatmap=path == test_images[0])
        differences.append(abs(float(answer["pneumonia"]) - expected.probabilities["PNEUMONIA"]))
        assert differences[-1] <= 1e-5, path.name  # the bound docs/private_mode.md states
        assert answer["looksLikeXray"] == str(expected.looks_like_xray).lower(), path.name
        assert answer["decision"] == expected.decision, path.name
        shown = "Model output" if expected.looks_like_xray else "This does not look like a chest X-ray"
        assert answer["text"].startswith(shown), path.name
    print(f"largest |P(PNEUMONIA) page - Python| over {len(answers)} images: {max(differences):.2e}")
    assert sum(not served_predictor.analyse(path).looks_like_xray for path in test_images[-3:]) >= 1  # guard exercised

    # The heatmap drawn by the page is Python's overlay of the same radiograph (a 224×224 JPEG: shown at its size).
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(overlay.split(",")[1]))).convert("RGB"))
    radiograph = served_predictor.read(test_images[0])
    python = np.asarray(served_predictor.analyse(radiograph, heatmap=True).overlay(radiograph), dtype=np.int16)
    assert np.abs(drawn.astype(np.int16) - python).mean() < 1.0

    # Only the page's own files and the model repo's files were requested: the images went nowhere.
    # The graph itself comes from the storage host the Hub redirects it to, as on huggingface.co.
    model_files, stored = f"{hub_endpoint(hub)}/{pushed_served_model}/resolve/", f"{storage_origin(hub)}/lfs/"
    assert {url for url in requests if not url.startswith((page_url, model_files, stored))} <= {f"{elsewhere}/upload"}
    assert {model_files + "main/onnx/model.onnx", model_files + "main/onnx/config.json"} <= set(requests)
    assert any(url.startswith(stored) for url in requests)


@pytest.mark.browser
@needs_chromium
def test_served_cross_origin_isolated_the_page_runs_on_every_core_with_the_same_answers(
        page_url, served_predictor, test_images, hub, browser, pushed_served_model):
    """The page served as the static Space serves it (its custom_headers, here by trainer.static_server): isolated,
    ONNX Runtime Web on navigator.hardwareConcurrency threads, the model still downloads from the Hub (CORS), and the
    answers are Python's."""
    site = Path(snapshot_download(SPACE_ID, repo_type="space", token=TOKEN))  # the Space page_url deployed
    server = serve_in_background(site)
    url, requests = f"http://127.0.0.1:{server.server_port}/", []
    page = browser.new_context().new_page()
    try:
        page.on("request", lambda request: requests.append(request.url))
        page.goto(url)
        page.locator("#xray:enabled, #status.error").first.wait_for(timeout=120_000)
        assert page.locator("#status").inner_text().startswith("Ready."), page.locator("#status").inner_text()
        cores = page.evaluate("navigator.hardwareConcurrency")
        assert page.evaluate("self.crossOriginIsolated") and cores > 1
        assert f"on {cores} thread(s)" in page.locator("#model").inner_text()
        answers = {}
        for path in test_images[::3]:  # X-rays, a resized PNG and a non-X-ray
            page.locator("#xray").set_input_files(str(path))
            result = page.locator(f'#result[data-file="{path.name}"]')
            result.wait_for(timeout=60_000)
            answers[path] = result.evaluate("element => ({...element.dataset})")
    finally:
        page.close()
        server.shutdown()
    for path, answer in answers.items():
        expected = served_predictor.analyse(path)
        assert float(answer["pneumonia"]) == pytest.approx(expected.probabilities["PNEUMONIA"], abs=1e-5), path.name
        assert answer["decision"] == expected.decision, path.name
    model_files, stored = f"{hub_endpoint(hub)}/{pushed_served_model}/resolve/", f"{storage_origin(hub)}/lfs/"
    assert {request for request in requests if not request.startswith((url, model_files, stored))} == set()


@pytest.mark.browser
@needs_chromium
def test_the_page_reads_dicom_with_the_python_readers_pixels_and_answers(page_url, served_model, served_predictor,
                                                                         browser, hub, pushed_served_model, tmp_path):
    """DICOM in the page (dicom.js): 8-bit, 12-bit MONOCHROME1 and windowed 12-bit X-rays, and pydicom's real CT slice
    (signed 16-bit with a rescale intercept), rendered with the Python reader's pixels (within one grey level) and
    answered as PneumoniaClassifier answers; a DICOM without pixels and a compressed one get the reason."""
    variants = dicom_variants(tmp_path)
    readable = [variants[name] for name in ("mono2_8bit", "mono1_12bit", "mono2_12bit_window")]
    readable.append(Path(shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct_slice.dcm")))
    refused = {write_dicom(tmp_path / "no_pixels.dcm", None): "has no pixel data (no image inside)",
               Path(shutil.copy(get_testdata_file("JPEG2000.dcm"), tmp_path / "compressed.dcm")):
                   "is compressed (transfer syntax 1.2.840.10008.1.2.4.91)"}
    page = browser.new_context().new_page()
    answers, requests = {}, []
    try:
        page.on("request", lambda request: requests.append(request.url))
        page.goto(page_url)
        page.locator("#xray:enabled").wait_for(timeout=120_000)
        for path in readable:
            page.locator("#xray").set_input_files(str(path))
            result = page.locator(f'#result[data-file="{path.name}"]')
            result.wait_for(timeout=60_000)
            answers[path] = result.evaluate("element => ({...element.dataset})")
            answers[path]["grey"] = page.locator("#radiograph").evaluate(
                "canvas => Array.from(canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data"
                ".filter((_, i) => i % 4 === 0))")
        for path, reason in refused.items():
            page.locator("#xray").set_input_files(str(path))
            page.locator("#status.error", has_text=reason).wait_for(timeout=30_000)
            assert page.locator("#result").is_hidden()
    finally:
        page.close()
    for path, answer in answers.items():
        python = np.asarray(served_predictor.read(path).convert("L"), dtype=int)
        assert np.abs(np.array(answer["grey"]).reshape(python.shape) - python).max() <= 1, path.name
        expected = served_predictor.analyse(path)
        assert answer["decision"] == expected.decision and answer["looksLikeXray"] == str(expected.looks_like_xray).lower()
        raw = served_model.predict(path, allow_non_xray=True)["PNEUMONIA"]
        assert float(answer["pneumonia"]) == pytest.approx(raw, abs=0.01), path.name
    assert {answers[path]["decision"] for path in readable[:3]} <= {"NORMAL", "PNEUMONIA"}
    assert answers[readable[3]]["decision"] == "NOT_A_CHEST_XRAY"  # the CT slice
    model_files, stored = f"{hub_endpoint(hub)}/{pushed_served_model}/resolve/", f"{storage_origin(hub)}/lfs/"
    assert {url for url in requests if not url.startswith((page_url, model_files, stored))} == set()  # went nowhere
