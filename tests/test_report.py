"""The Snakemake HTML report: built from the demo run, opened in a real (headless) browser."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM_FLAGS, REPO, chromium

pytestmark = [pytest.mark.workflow, pytest.mark.xdist_group("demo_dir")]


@pytest.fixture(scope="module")
def report_html(demo_run: Path) -> Path:
    out = demo_run / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(demo_run),
         "--configfile", str(demo_run / "config.yaml"), "--report", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_report_embeds_every_panel(report_html: Path, demo_run: Path):
    html = report_html.read_text(encoding="utf-8", errors="replace")
    assert report_html.stat().st_size > 500_000  # self-contained: figures embedded
    for n in ("2", "3"):
        for name in ("composite.png", "flow.png", "vectors.png", "models.html"):
            assert (demo_run / "results" / "qc" / f"{n}.{name}").exists()
    for text in ("red/cyan composites", "tie-point vectors", "displacement and confidence",
                 "models and residual", "Registration"):  # fmt: skip
        assert text in html, text
    assert "Red/cyan composites of dataset" in html  # a caption


def test_report_opens_in_headless_chromium(report_html: Path, tmp_path: Path):
    """The report renders in Debian's Chromium, headless: its navigation appears (waited for
    up to three minutes on a loaded machine: on a fresh clone's CI run with three workers on
    two cores, a one-minute wait once ran out; alone it renders in seconds) and the page has
    contrast, not a blank sheet. (A bare `chromium --screenshot` proved flaky under load: it
    could shoot the page before its JavaScript had drawn it.)"""
    browser = chromium()
    from PIL import Image
    from playwright import sync_api as playwright

    png = tmp_path / "report.png"
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=CHROMIUM_FLAGS)
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(report_html.as_uri())
        page.get_by_text("Results").first.wait_for(timeout=180_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(png))
        b.close()
    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    # a rendered page: the sidebar and the rule graph give contrast
    assert img.std() > 20 and (img < 128).mean() > 0.05, (img.std(), (img < 128).mean())


def test_report_panels_show_in_the_browser(report_html: Path, tmp_path: Path):
    """Click through Results -> Registration -> dataset N and open every panel."""
    browser = chromium()
    from PIL import Image
    from playwright import sync_api as playwright

    shots = {}
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=CHROMIUM_FLAGS)
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        for n in ("2", "3"):
            page.goto(report_html.as_uri())
            page.wait_for_timeout(2000)
            page.get_by_text("Results").first.click()
            page.wait_for_timeout(300)
            page.get_by_text("Registration").first.click()
            page.wait_for_timeout(300)
            page.get_by_text(f"dataset {n}").first.click()
            page.wait_for_timeout(500)
            for figure in ("red/cyan composites", "tie-point vectors",
                           "displacement and confidence", "models and residual"):  # fmt: skip
                row = page.locator("tr", has_text=figure).first
                row.locator("a[iconname=eye]").first.click()
                page.wait_for_timeout(800)
                png = tmp_path / f"{n}-{figure.replace('/', '-').replace(' ', '_')}.png"
                page.screenshot(path=str(png))
                shots[(n, figure)] = np.asarray(Image.open(png).convert("L"), dtype=float)
        b.close()
    assert len(shots) == 8
    for key, img in shots.items():
        panel = img[:, 420:]  # right of the sidebar: the figure or table being shown
        assert panel.std() > 10, key
    # each panel shows something different
    keys = list(shots)
    pairs = zip(keys, keys[1:], strict=False)
    diffs = {(a, b): float(np.abs(shots[a] - shots[b]).mean()) for a, b in pairs}
    assert all(d > 1 for d in diffs.values()), diffs


def test_report_opens_on_the_overview_page(report_html: Path, tmp_path: Path):
    """The first entry under Results is the overview page (results/report.html), and its eye
    shows the page itself, inline: the datasets table and the comparisons drawn (the page stays
    under the 2 MB a data URL may take, which is how the report embeds it)."""
    browser = chromium()
    from playwright import sync_api as playwright

    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=CHROMIUM_FLAGS)
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(report_html.as_uri())
        page.get_by_text("Results").first.wait_for(timeout=180_000)
        entries = [e.strip() for e in page.locator("nav li").all_text_contents()]
        results = entries[entries.index("Results") + 1 :]
        assert results[0] == "Overview" and "Registration" in results, entries
        frame = page.frame_locator("iframe")
        for attempt in range(3):  # a click before the report's script is ready opens nothing
            page.get_by_text("Overview").first.click()
            page.locator("a[iconname=eye]").first.click()
            try:
                frame.locator("table.datasets").wait_for(timeout=60_000)
                break
            except playwright.TimeoutError:
                if attempt == 2:
                    raise
        assert frame.locator("table.datasets tbody tr").count() == 3
        frame.locator(".compare[data-draws]").first.wait_for(timeout=180_000)
        page.screenshot(path=str(tmp_path / "report-overview.png"))
        b.close()
