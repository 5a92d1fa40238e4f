"""`costack verify` checks what it is given, or refuses it: a run's catalog has every item it
links checked (a tampered COG or a missing item fails), and a document with nothing it can
check (another provider's item of remote assets, JSON that is no STAC) is refused in one line
rather than passed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "costack.cli"]


def _verify(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "verify", str(path)], capture_output=True, text=True, timeout=300)


def _error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("costack: error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.workflow
def test_verify_a_catalog_checks_its_items(demo_run: Path, tmp_path: Path):
    results = tmp_path / "results"
    shutil.copytree(demo_run / "results" / "stack", results / "stack")
    shutil.copy(demo_run / "results" / "catalog.json", results)
    catalog = results / "catalog.json"
    item = json.loads((results / "stack" / "costack-demo.json").read_text())
    n = sum(1 for a in item["assets"].values() if "file:checksum" in a)
    assert n >= 10

    ok = _verify(catalog)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"ok: {n} file(s) of {catalog} match their checksums"

    cog = results / "stack" / "3.s0_db_c_vh.tif"
    data = bytearray(cog.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the pixels
    cog.write_bytes(bytes(data))
    bad = _verify(catalog)
    assert "3.s0_db_c_vh: ./3.s0_db_c_vh.tif does not match its file:checksum" in bad.stderr
    assert "1 published file(s) differ" in _error(bad)

    (results / "stack" / "costack-demo.json").unlink()
    gone = _verify(catalog)
    assert "item ./stack/costack-demo.json of catalog.json is missing" in gone.stderr
    assert "1 published file(s) differ" in _error(gone)


def test_verify_refuses_what_it_cannot_check(tmp_path: Path):
    """An item whose assets are all on the network (nothing local to check), a catalog that
    links an item on the network or none, and JSON that is no STAC document."""
    item = {"type": "Feature", "stac_version": "1.1.0", "id": "remote", "properties": {},
            "assets": {"b": {"href": "https://example.com/b.tif",
                             "file:checksum": "1220" + "0" * 64}}}  # fmt: skip
    (tmp_path / "item.json").write_text(json.dumps(item))
    assert "nothing to verify" in _error(_verify(tmp_path / "item.json"))

    catalog = {"type": "Catalog", "id": "c", "stac_version": "1.1.0", "description": "",
               "links": [{"rel": "item", "href": "https://example.com/item.json"}]}  # fmt: skip
    (tmp_path / "catalog.json").write_text(json.dumps(catalog))
    refused = _error(_verify(tmp_path / "catalog.json"))
    assert "on the network, which verify does not fetch" in refused
    catalog["links"] = [{"rel": "root", "href": "./catalog.json"}]
    (tmp_path / "catalog.json").write_text(json.dumps(catalog))
    assert "the catalog links no item" in _error(_verify(tmp_path / "catalog.json"))

    (tmp_path / "other.json").write_text('{"a": 1}\n')
    assert "neither a STAC item (Feature) nor a catalog" in _error(_verify(tmp_path / "other.json"))
