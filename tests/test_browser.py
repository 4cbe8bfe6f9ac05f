"""The app in a real browser: Playwright driving Debian's Chromium (never a downloaded browser)."""

import csv
import io
import urllib.request

import pytest
from PIL import Image

from serving.upload import radiograph
from tests.app_inputs import bad_uploads
from tests.conftest import sample_images
from tests.web import needs_chromium

pytestmark = [needs_chromium, pytest.mark.browser, pytest.mark.slow]
SLIDER_IMAGES = "#comparison [data-testid=imageslider-image]"


@pytest.fixture
def page(app_url, browser):
    """A fresh page (its own browser context) of the session's Chromium, showing the app."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(app_url)
    page.get_by_role("button", name="Analyse").wait_for(timeout=60_000)
    yield page
    page.close()


def analyse(page, path):
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.get_by_role("button", name="Analyse").click()
    page.locator("p", has_text="Model output:").wait_for(timeout=60_000)


def test_the_radiograph_appears_at_its_aspect_ratio_before_the_analysis(page, tmp_path):
    wide = tmp_path / "wide.png"
    Image.open(sample_images("test", "PNEUMONIA", 1)[0]).convert("L").resize((900, 600)).save(wide)
    page.locator("#upload input[type=file]").set_input_files(str(wide))
    preview = page.locator("#radiograph img")
    preview.wait_for(timeout=30_000)
    box = preview.bounding_box()
    assert box["width"] / box["height"] == pytest.approx(900 / 600, rel=0.02)
    assert preview.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [900, 600]
    assert page.locator("p", has_text="Model output:").count() == 0  # nothing was analysed yet
    page.screenshot(path=tmp_path / "preview.png", full_page=True)


def test_the_slider_compares_the_radiograph_with_its_grad_cam_overlay(page, tmp_path):
    analyse(page, sample_images("test", "PNEUMONIA", 1)[0])
    assert "not for clinical use" in page.locator("p", has_text="Model output:").inner_text()
    assert page.get_by_test_id("label-output-value").inner_text().strip() in {"NORMAL", "PNEUMONIA"}
    assert page.get_by_text("Research demo, not for clinical use").first.is_visible()
    comparison = page.locator("#comparison")
    comparison.get_by_test_id("imageslider-image").last.wait_for(timeout=30_000)
    page.screenshot(path=tmp_path / "result.png", full_page=True)
    before = comparison.screenshot(path=tmp_path / "slider_before.png")
    handle = comparison.get_by_test_id("slider").bounding_box()
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(handle["x"] - 150, handle["y"] + handle["height"] / 2, steps=5)
    page.mouse.up()
    after = comparison.screenshot(path=tmp_path / "slider_moved.png")
    assert before != after
    assert page.locator("#overlay-png a[download]").first.get_attribute("download").endswith(".png")
    # Removing the file (before choosing another) removes its answer: no decision outlives its radiograph
    page.locator("#upload").get_by_role("button", name="Clear").click()
    page.locator("p", has_text="Model output:").wait_for(state="detached", timeout=30_000)
    assert comparison.get_by_test_id("imageslider-image").count() == 0
    assert page.locator("#radiograph img").count() == 0


def test_an_answer_sends_each_display_image_once_as_webp_and_a_new_opacity_only_the_overlay(page, tmp_path):
    """The bytes behind one answer (a 1600x1300 JPEG shown at 1024 px): the radiograph once (the preview's WebP; the
    slider's left image is the same bytes, so the same URL), the overlay once, both WebP, together at most a fifth of
    the same two images as PNG; the overlay's PNG download is not fetched until asked for; a new opacity fetches
    the new overlay only."""
    large = tmp_path / "large.jpeg"
    Image.open(sample_images("test", "PNEUMONIA", 1)[0]).convert("L").resize((1600, 1300), Image.BICUBIC).save(
        large, quality=90)
    page.wait_for_load_state("networkidle")  # the example thumbnails (JPEGs) are in
    fetched = []  # the images the app answers with (the examples are JPEGs)
    page.on("requestfinished", lambda request: fetched.append((request.url, request.sizes()["responseBodySize"]))
            if "/gradio_api/file=" in request.url and request.url.endswith((".webp", ".png")) else None)
    analyse(page, large)
    slider = page.locator("#comparison").get_by_test_id("imageslider-image")
    slider.last.wait_for(timeout=30_000)
    page.wait_for_function(f"[...document.querySelectorAll('{SLIDER_IMAGES}')].every(image => image.complete)")
    page.wait_for_timeout(1_000)  # drawn; any other fetch (a second radiograph) would have finished by now
    urls = [url for url, _ in fetched]
    preview = page.locator("#radiograph img").get_attribute("src")
    sources = slider.evaluate_all("images => images.map(image => image.src)")
    assert len(urls) == len(set(urls)) == 2 and all(url.endswith(".webp") for url in urls), urls
    assert preview in sources and set(sources) == set(urls)
    download = page.locator("#overlay-png a[download]").first.get_attribute("href")
    png_sizes = [len(urllib.request.urlopen(download).read()), png_size(radiograph(large))]
    assert sum(size for _, size in fetched) <= sum(png_sizes) / 5, (fetched, png_sizes)

    fetched.clear()
    overlay_before = sources[-1] if sources[-1] != preview else sources[0]
    opacity = page.locator("input[type=range]").last
    with page.expect_request_finished(lambda request: request.url.endswith(".webp"), timeout=30_000):
        opacity.fill("0.8")
        opacity.dispatch_event("pointerup")
    page.wait_for_function(f"old => [...document.querySelectorAll('{SLIDER_IMAGES}')]"
                           ".every(image => image.src !== old && image.complete)", arg=overlay_before, timeout=30_000)
    page.wait_for_timeout(1_000)  # the radiograph, were it fetched again, would have arrived by now
    assert len(fetched) == 1 and fetched[0][0] != preview and fetched[0][0].endswith(".webp"), fetched


def png_size(image: Image.Image) -> int:
    buffer = io.BytesIO()
    image.save(buffer, "png")
    return len(buffer.getvalue())


def test_an_example_thumbnail_is_analysed_in_one_click(page, tmp_path):
    page.locator("#examples img").first.click()
    page.locator("p", has_text="Model output:").wait_for(timeout=60_000)
    page.locator("#radiograph img").wait_for(timeout=30_000)
    page.screenshot(path=tmp_path / "example.png", full_page=True)


def test_the_screening_tab_turns_ten_files_one_corrupt_into_a_csv(page, tmp_path):
    images = sample_images("test", "NORMAL", 5) + sample_images("test", "PNEUMONIA", 4)
    corrupt = tmp_path / "corrupt.jpeg"
    corrupt.write_bytes(images[0].read_bytes()[:300])
    page.get_by_role("tab", name="Screen a folder").click()
    page.locator("#screen-files input[type=file]").set_input_files([str(p) for p in [*images, corrupt]])
    page.get_by_role("button", name="Screen", exact=True).click()
    link = page.locator("#screen-csv a[download]").first
    link.wait_for(timeout=120_000)
    page.screenshot(path=tmp_path / "screening.png", full_page=True)
    with page.expect_download() as download:
        link.click()
    with open(download.value.path(), newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["path"] for row in rows] == [p.name for p in [*images, corrupt]]
    assert all(row["prediction"] in {"NORMAL", "PNEUMONIA"} and not row["error"] for row in rows[:9])
    assert rows[9]["prediction"] == "" and "damaged or incomplete" in rows[9]["error"]


def test_upload_a_bad_file_and_read_the_error_toast(page, tmp_path):
    path, phrase = bad_uploads(tmp_path)["text renamed .png"]
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.get_by_role("button", name="Analyse").click()
    toast = page.get_by_text("This file is not an image we can read")
    toast.wait_for(timeout=60_000)
    assert toast.is_visible()
    page.screenshot(path=tmp_path / "error.png", full_page=True)
