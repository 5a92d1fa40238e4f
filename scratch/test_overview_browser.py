"""Prototype of the overview page's browser test (moves to tests/ after the Layout commit)."""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from overview import render_overview  # noqa: E402

RESULTS = Path(os.environ.get("OVERVIEW_RESULTS", Path(__file__).parents[1] / "results"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


def _browser():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium not installed (Debian's package; .ci/run installs it)")
    return path


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)


@pytest.fixture(scope="module")
def page_html(tmp_path_factory) -> Path:
    if not (RESULTS / "qc" / "summary.json").is_file():
        pytest.skip("no demo run")
    out = RESULTS / "report.html"
    render_overview(RESULTS, out, "1.nir", "costack-demo", ["ndvi", "sar_water_mask"])
    return out


def test_overview_swipe_flicker_in_chromium(page_html: Path, tmp_path: Path):
    browser = _browser()
    sync = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=FLAGS)
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: r.url.startswith(("http:", "https:")) and errors.append(
            f"network request {r.url}"))  # fmt: skip
        page.goto(page_html.as_uri())
        comp = page.locator(".compare[data-dataset='2']")
        page.wait_for_function(
            "() => Number(document.querySelector(\".compare[data-dataset='2']\")"
            ".dataset.draws || 0) > 0", timeout=60_000)  # fmt: skip
        view = comp.locator("canvas.view")
        view.scroll_into_view_if_needed()
        first = _pixels(view.screenshot())
        # the user drags the swipe to 20 %: the band between 20 % and 50 % now shows A
        swipe = comp.locator("input.swipe")
        box = swipe.bounding_box()
        page.mouse.click(box["x"] + 0.2 * box["width"], box["y"] + box["height"] / 2)
        value = int(swipe.input_value())
        assert 150 <= value <= 250, value
        second = _pixels(view.screenshot())
        w = first.shape[1]
        band = slice(int(w * 0.25), int(w * 0.45))
        left = slice(0, int(w * 0.15))
        rows = slice(30, None)  # below the label strip
        changed = np.abs(first[rows, band] - second[rows, band]).mean()
        same = np.abs(first[rows, left] - second[rows, left]).mean()
        assert changed > 10 and same < 1, (changed, same)
        # B = before: the secondary before co-registration differs from after
        comp.locator("button.show-before").click()
        before = _pixels(view.screenshot())
        right = slice(int(w * 0.3), None)
        assert np.abs(before[rows, right] - second[rows, right]).mean() > 5
        # flicker: successive frames alternate A and B over the whole view
        comp.locator("button.flicker").click()
        draws = int(comp.get_attribute("data-draws"))
        page.wait_for_function(
            f"() => Number(document.querySelector(\".compare[data-dataset='2']\")"
            f".dataset.draws) > {draws + 1}", timeout=10_000)  # fmt: skip
        f1 = _pixels(view.screenshot())
        draws = int(comp.get_attribute("data-draws"))
        page.wait_for_function(
            f"() => Number(document.querySelector(\".compare[data-dataset='2']\")"
            f".dataset.draws) > {draws}", timeout=10_000)  # fmt: skip
        f2 = _pixels(view.screenshot())
        assert np.abs(f1[rows] - f2[rows]).mean() > 5
        comp.locator("button.flicker").click()
        # a click on the overview's upper-left corner moves the window there
        ov = comp.locator("canvas.overview")
        ov.click(position={"x": 3, "y": 3})
        assert comp.locator(".where").inner_text().startswith("rows 0-"), comp.locator(
            ".where").inner_text()  # fmt: skip
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
        b.close()
    assert errors == []
    assert (tmp_path / "overview.png").stat().st_size > 50_000
