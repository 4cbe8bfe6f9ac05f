"""The app in a real browser: Playwright driving Debian's Chromium (never a downloaded browser)."""

import shutil

import pytest

from tests.app_inputs import bad_uploads
from tests.conftest import sample_images

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium); "
                                                          ".ci/run installs it, so CI always runs these tests")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(app_url)
        page.get_by_role("button", name="Analyse").wait_for(timeout=60_000)
        yield page
        browser.close()


def test_upload_a_real_xray_and_read_the_result(page, tmp_path):
    page.locator("input[type=file]").first.set_input_files(str(sample_images("test", "PNEUMONIA", 1)[0]))
    page.get_by_role("button", name="Analyse").click()
    decision = page.locator("p", has_text="Model output:")
    decision.wait_for(timeout=60_000)
    assert "not for clinical use" in decision.inner_text()
    label_value = page.get_by_test_id("label-output-value")
    assert label_value.inner_text().strip() in {"NORMAL", "PNEUMONIA"}
    heatmap = page.locator("#gradcam img")
    heatmap.wait_for(timeout=30_000)
    assert heatmap.evaluate("img => img.naturalWidth") == 224
    assert page.get_by_text("Research demo, not for clinical use").first.is_visible()
    page.screenshot(path=tmp_path / "result.png", full_page=True)
    assert (tmp_path / "result.png").stat().st_size > 10_000


def test_upload_a_bad_file_and_read_the_error_toast(page, tmp_path):
    path, phrase = bad_uploads(tmp_path)["text renamed .png"]
    page.locator("input[type=file]").first.set_input_files(str(path))
    page.get_by_role("button", name="Analyse").click()
    toast = page.get_by_text("This file is not an image we can read")
    toast.wait_for(timeout=60_000)
    assert toast.is_visible()
    page.screenshot(path=tmp_path / "error.png", full_page=True)
