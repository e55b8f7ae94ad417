"""The demo report in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``) through
Selenium. Skipped, with the reason, where either is missing."""

import json
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt install chromium)"),
    pytest.mark.skipif(DRIVER is None, reason="chromedriver is not installed (Debian: apt install chromium-driver)"),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_report_renders_with_every_image_and_section(smoke_demo, browser):
    browser.get(smoke_demo.report_html.resolve().as_uri())
    assert browser.title == "vistok demo report"
    report = json.loads(smoke_demo.report_json.read_text())
    sections = browser.execute_script(
        "return Array.from(document.querySelectorAll('section[data-stage]')).map(s => s.dataset.stage)"
    )
    assert sections == [s["name"] for s in report["stages"]]
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.dataset.file, i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert len(images) == sum(len(s["pictures"]) for s in report["stages"]) > 0
    broken = [f for f, done, w, h in images if not (done and w > 0 and h > 0)]
    assert not broken, f"images that did not load: {broken}"
    svgs = browser.execute_script("return document.querySelectorAll('svg polyline').length")
    assert svgs > 0  # the loss curves are drawn
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(max(height, 800), 16000))
    shot = smoke_demo.out / "report_screenshot.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
