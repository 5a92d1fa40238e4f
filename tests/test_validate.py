"""`costack validate`: offline validation of the run's item and catalog against the vendored
STAC 1.1.0 and extension schemas (no network), in one command; an invalid item fails naming
the field, a document of another STAC version or an unvendored extension is refused, not
passed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "costack.cli", "validate"]


def _run(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, str(path)], capture_output=True, text=True, timeout=120)


@pytest.mark.workflow
def test_the_demo_item_and_catalog_validate_offline(demo_run: Path, tmp_path: Path):
    results = tmp_path / "results"
    shutil.copytree(demo_run / "results" / "stack", results / "stack")
    shutil.copy(demo_run / "results" / "catalog.json", results)
    ok = _run(results / "catalog.json")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: 2 STAC document(s) of "), ok.stdout

    item_path = results / "stack" / "costack-demo.json"
    item = json.loads(item_path.read_text())
    item["properties"]["proj:code"] = 32631  # the projection extension wants a string
    asset = next(iter(item["assets"].values()))
    asset["file:size"] = "big"  # and the file extension an integer
    item_path.write_text(json.dumps(item))
    bad = _run(results / "catalog.json")
    assert bad.returncode == 2
    assert (
        "costack-demo.json: https://stac-extensions.github.io/projection/v2.0.0/schema.json: "
        "properties/proj:code: 32631 is not of type 'string'" in bad.stderr
    ), bad.stderr
    assert "file-v2.1.0" not in bad.stderr and "file/v2.1.0/schema.json" in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("costack: error: document: ")


def test_what_cannot_be_validated_offline_is_refused(tmp_path: Path):
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "x", "properties": {},
            "geometry": None, "links": [], "assets": {}}  # fmt: skip
    (tmp_path / "old.json").write_text(json.dumps(item))
    proc = _run(tmp_path / "old.json")
    assert proc.returncode == 2 and "stac_version 1.0.0: only 1.1.0's schemas" in proc.stderr
    item.update(stac_version="1.1.0", bbox=None, stac_extensions=[
        "https://stac-extensions.github.io/landsat/v2.0.0/schema.json"])  # fmt: skip
    item["properties"]["datetime"] = "2024-01-01T00:00:00Z"
    (tmp_path / "ext.json").write_text(json.dumps(item))
    proc = _run(tmp_path / "ext.json")
    assert proc.returncode == 2
    assert "landsat/v2.0.0/schema.json is not vendored" in proc.stderr, proc.stderr
    catalog = {"type": "Catalog", "stac_version": "1.1.0", "id": "c", "description": "d",
               "links": [{"rel": "item", "href": "https://example.com/i.json"}]}  # fmt: skip
    (tmp_path / "catalog.json").write_text(json.dumps(catalog))
    proc = _run(tmp_path / "catalog.json")
    assert proc.returncode == 2 and "is on the network, not fetched" in proc.stderr
