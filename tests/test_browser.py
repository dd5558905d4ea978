"""The report and the viewer in a real headless browser: Debian's chromium driven by selenium through
/usr/bin/chromedriver (never a downloaded browser). Skipped only where chromedriver is absent and the
environment variable CI is unset; in CI a missing browser fails these tests."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import report_toys as toys
from PIL import Image as PILImage

from salient.report.html import build_report
from salient.report.viewer import make_server

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")


def _need_browser() -> None:
    why = None
    if not (os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM)):
        why = f"no {CHROMEDRIVER} / {CHROMIUM} (apt-get install chromium chromium-driver)"
    else:
        try:
            import selenium  # noqa: F401
        except ImportError:
            why = "selenium is not installed (pip install -e '.[dev]')"
    if why and os.environ.get("CI"):
        pytest.fail(f"browser tests must run in CI: {why}")
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    return {"image": toys.image_store(root), "video": toys.video_store(root), "huge": toys.pyramid_store(root)}


@pytest.fixture(scope="module")
def servers(stores):
    got, running = {}, []
    for name, out in stores.items():
        srv = make_server(out, 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        running.append(srv)
        got[name] = f"http://127.0.0.1:{srv.server_address[1]}"
    yield got
    for srv in running:
        srv.shutdown()
        srv.server_close()


def console_errors(d) -> list[str]:
    return [e["message"] for e in d.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def wait(d, script: str, timeout: float = 15.0):
    """Poll a JS expression until it is truthy; returns its value."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = d.execute_script("return " + script)
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def broken_images(d) -> list[str]:
    return d.execute_script(
        "return [...document.images].filter(i => i.getAttribute('src') && "
        "!(i.complete && i.naturalWidth > 0)).map(i => i.src)")


def not_blank(d) -> None:
    shot = np.asarray(PILImage.open(io.BytesIO(d.get_screenshot_as_png())).convert("RGB"))
    colours = np.unique(shot.reshape(-1, 3)[::7], axis=0)
    assert shot.std() > 10 and len(colours) > 50, "the screenshot is blank"


@pytest.mark.parametrize("kind", ["image", "video", "huge"])
def test_report_from_file_has_no_errors_and_every_link_and_image_resolves(driver, stores, kind):
    index = build_report(stores[kind])
    pages = [index, *sorted(index.parent.glob("gallery-*.html"))]
    for page in pages:
        driver.get(page.as_uri())
        wait(driver, "document.readyState === 'complete'")
        assert wait(driver, "[...document.images].every(i => i.complete)")
        assert broken_images(driver) == []
        assert driver.execute_script("return document.images.length") > 0
        for href in driver.execute_script("return [...document.links].map(a => a.href)"):
            parts = urlsplit(href)
            assert parts.scheme == "file", href
            assert Path(unquote(parts.path)).is_file(), href
        assert console_errors(driver) == []
        if page == index:
            not_blank(driver)


def item_page(d, base: str, position: int, method: str, overlays: int) -> None:
    d.get(f"{base}/item?position={position}&method={method}")
    wait(d, f"document.querySelectorAll('.panel.overlay[data-loaded]').length === {overlays}")
    assert wait(d, "[...document.images].every(i => !i.getAttribute('src') || (i.complete && i.naturalWidth > 0))")


def square_positions(d) -> list[tuple[float, float]]:
    """Centre of the square in every panel, relative to its view box (from the DOM)."""
    return d.execute_script("""
        return [...document.querySelectorAll('.panel')].map(p => {
          const v = p.querySelector('.view').getBoundingClientRect();
          const s = p.querySelector('.square').getBoundingClientRect();
          return [(s.left + s.width / 2 - v.left) / v.width, (s.top + s.height / 2 - v.top) / v.height];
        });""")


def test_viewer_dida_view_square_follows_the_mouse_in_every_panel(driver, servers):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    item_page(driver, servers["image"], 2, "dida", overlays=2)
    panels = driver.find_elements(By.CSS_SELECTOR, ".panel")
    assert len(panels) == 3 and "original" in panels[0].get_attribute("class")  # the original + top-2 overlays
    captions = [p.find_element(By.CSS_SELECTOR, ".caption").text for p in panels[1:]]
    assert all("score" in c and "insertion_auc" in c and "deletion_auc" in c for c in captions)
    for u, v in ((0.3, 0.6), (0.8, 0.25)):
        box = panels[1].find_element(By.CSS_SELECTOR, ".view")
        w, h = box.size["width"], box.size["height"]
        ActionChains(driver).move_to_element_with_offset(box, int((u - 0.5) * w), int((v - 0.5) * h)).perform()
        got = square_positions(driver)
        assert len(got) == 3
        for gu, gv in got:
            assert abs(gu - u) <= 1.5 / w and abs(gv - v) <= 1.5 / h
        insets = driver.execute_script(
            "return [...document.querySelectorAll('.panel')].map(p => p.querySelector('.inset img').style.left)")
        assert len(set(insets)) == 1  # the magnified insets show the same spot
    assert console_errors(driver) == []
    not_blank(driver)


def test_viewer_method_and_target_switchers_and_opacity(driver, servers):
    from selenium.webdriver.support.ui import Select

    item_page(driver, servers["image"], 2, "dida", overlays=2)
    rows = driver.execute_script("return [...document.querySelectorAll('.panel.overlay')].map(p => p.dataset.row)")
    Select(driver.find_element("id", "target")).select_by_value("1")  # one target only
    wait(driver, "document.querySelectorAll('.panel.overlay[data-loaded]').length === 1")
    assert driver.execute_script("return document.querySelector('.panel.overlay').dataset.row") == rows[1]
    Select(driver.find_element("id", "target")).select_by_value("all")
    wait(driver, "document.querySelectorAll('.panel.overlay[data-loaded]').length === 2")
    before = driver.execute_script("return [...document.querySelectorAll('.panel.overlay')].map(p => p.dataset.row)")
    srcs = driver.execute_script("return [...document.querySelectorAll('.panel.overlay img.map')].map(i => i.src)")
    Select(driver.find_element("id", "method")).select_by_visible_text("rise")
    wait(driver, "document.querySelectorAll('.panel.overlay[data-loaded]').length === 1")
    after = driver.execute_script("return [...document.querySelectorAll('.panel.overlay')].map(p => p.dataset.row)")
    new_srcs = driver.execute_script("return [...document.querySelectorAll('.panel.overlay img.map')].map(i => i.src)")
    assert after != before and not set(new_srcs) & set(srcs)
    assert driver.execute_script("return [...document.querySelectorAll('.panel.overlay')].every(p => "
                                 "p.dataset.method === 'rise')")
    assert "method=rise" in driver.current_url
    driver.execute_script("const o = document.getElementById('opacity'); o.value = '0.8';"
                          "o.dispatchEvent(new Event('input'));")
    assert driver.execute_script(
        "return [...document.querySelectorAll('img.map')].every(i => i.style.opacity === '0.8')")
    assert console_errors(driver) == []


def test_viewer_frame_slider_moves_every_panel(driver, servers):
    item_page(driver, servers["video"], 0, "dida3d", overlays=2)
    assert driver.execute_script("return !document.getElementById('framebox').hidden")
    assert driver.execute_script("return document.getElementById('frame').max") == "4"
    src0 = driver.execute_script("return [...document.querySelectorAll('img.map')].map(i => i.src)")
    assert len(src0) == 4  # two panels, each its map and the map in its inset
    driver.execute_script("const f = document.getElementById('frame'); f.value = '3';"
                          "f.dispatchEvent(new Event('input'));")
    wait(driver, "[...document.querySelectorAll('.panel.overlay')].every(p => p.dataset.frame === '3')")
    wait(driver, "[...document.querySelectorAll('img.map')].every(i => i.complete && i.naturalWidth > 0)")
    src3 = driver.execute_script("return [...document.querySelectorAll('img.map')].map(i => i.src)")
    assert not set(src3) & set(src0)  # every panel's map (and its inset) was replaced
    assert console_errors(driver) == []


def test_viewer_pan_zoom_reads_finer_levels(driver, servers):
    item_page(driver, servers["huge"], 1, "mosaic", overlays=1)
    assert driver.execute_script("return document.querySelector('.panel.overlay').dataset.level") == "1"
    driver.find_element("id", "zoomin").click()
    wait(driver, "document.querySelector('.panel.overlay').dataset.level === '0'")
    driver.find_element("id", "zoomreset").click()
    wait(driver, "document.querySelector('.panel.overlay').dataset.level === '1'")
    assert console_errors(driver) == []


def test_viewer_item_browser_filters_and_links(driver, servers, stores):
    import urllib.request

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    build_report(stores["image"])  # the browser links to it
    driver.get(servers["image"] + "/")
    wait(driver, "document.querySelectorAll('#rows tbody tr').length === 20")
    wait(driver, "!document.getElementById('report').hidden")
    for href in driver.execute_script("return [...document.links].map(a => a.href)"):
        assert href.startswith(servers["image"]), href  # nothing off the server
        with urllib.request.urlopen(href) as r:
            assert r.status == 200, href
    Select(driver.find_element("id", "method")).select_by_visible_text("rise")
    wait(driver, "document.querySelectorAll('#rows tbody tr').length === 7")
    Select(driver.find_element("id", "status")).select_by_visible_text("error")
    wait(driver, "document.querySelectorAll('#rows tbody tr').length === 1")
    Select(driver.find_element("id", "status")).select_by_visible_text("all")
    Select(driver.find_element("id", "sort")).select_by_visible_text("insertion_auc")
    driver.find_element("id", "desc").click()
    wait(driver, "document.querySelectorAll('#rows tbody tr').length === 7 && "
                 "document.querySelector('#rows tbody tr td:nth-child(3)').textContent === 'p5.png'")
    link = driver.find_element(By.CSS_SELECTOR, "a.view-link")
    link.click()
    wait(driver, "document.querySelectorAll('.panel.overlay[data-loaded]').length === 1")
    assert "position=5" in driver.current_url
    assert console_errors(driver) == []
