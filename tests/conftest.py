"""Shared fixtures: small synthetic datasets with STAC items, and Snakemake runners."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import yaml
from rasterio.crs import CRS
from rasterio.transform import Affine

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "resources" / "demo"
SHARED_DATA = REPO.parent / "shared" / "data"
UTM31 = CRS.from_epsg(32631)
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def write_raster(
    path: Path,
    data: np.ndarray,
    crs: CRS | None = UTM31,
    transform: Affine | None = None,
    nodata: float | None = None,
    gcps=None,
) -> Path:
    """Write a GeoTIFF from a (rows, cols) or (bands, rows, cols) array."""
    arr = data if data.ndim == 3 else data[None]
    profile = dict(
        driver="GTiff", dtype=arr.dtype.name, count=arr.shape[0], height=arr.shape[1],
        width=arr.shape[2], nodata=nodata,
    )  # fmt: skip
    if transform is not None:
        profile.update(crs=crs, transform=transform)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
        if gcps is not None:
            dst.gcps = gcps
    return path


def write_item(
    folder: Path, item_id: str, assets: dict[str, dict], properties: dict | None = None
) -> Path:
    """Write a STAC item whose assets are ``{key: {"href": ..., extra fields...}}``."""
    folder.mkdir(parents=True, exist_ok=True)
    item = pystac.Item(
        id=item_id,
        geometry={"type": "Point", "coordinates": [3.0, 45.0]},
        bbox=[3.0, 45.0, 3.0, 45.0],
        datetime=pystac.utils.str_to_datetime("2024-06-10T10:00:00Z"),
        properties=properties or {},
    )
    for key, fields in assets.items():
        fields = dict(fields)
        href = fields.pop("href")
        item.add_asset(key, pystac.Asset(href=href, roles=["data"], extra_fields=fields))
    path = folder / "item.json"
    path.write_text(json.dumps(item.to_dict(include_self_link=False), indent=1))
    return path


def scene(rows: int = 64, cols: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth textured test image (Float32)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal((rows, cols)), 2.0)
    return (img / img.std()).astype(np.float32)


@pytest.fixture
def two_datasets(tmp_path: Path) -> dict:
    """Two small optical datasets in UTM 31N, the second offset by 50 m and 20 m pixels."""
    t1 = Affine(10, 0, 500_000, 0, -10, 5_000_000)
    t2 = Affine(20, 0, 500_050, 0, -20, 4_999_950)
    d1 = tmp_path / "d1"
    d2 = tmp_path / "d2"
    write_raster(d1 / "nir.tif", scene(64, 64, 1), transform=t1)
    write_raster(d1 / "red.tif", scene(64, 64, 2), transform=t1)
    write_raster(d2 / "B08.tif", scene(32, 32, 3), transform=t2, nodata=-9999.0)
    i1 = write_item(
        d1, "d1",
        {"nir": {"href": "./nir.tif"}, "red": {"href": "./red.tif"}},
    )  # fmt: skip
    i2 = write_item(
        d2, "d2",
        {"B08": {"href": "./B08.tif", "eo:bands": [{"name": "B08", "common_name": "nir"}]}},
    )  # fmt: skip
    config = {"inputs": [str(i1), str(i2)], "assets": "1.nir,1.red,2.nir", "reference": "1.nir"}
    return {"config": config, "root": tmp_path, "items": [i1, i2]}


@contextlib.contextmanager
def loopback_server(root: Path, fail_first: int = 0):
    """A file server on 127.0.0.1 in its own process (``tests/range_server.py``: byte ranges,
    the first ``fail_first`` GETs of each file answered 503, every request logged); yields
    (base URL, log path). Its own process, since GDAL holds the GIL while it reads."""
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = root / "requests.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "range_server.py"), str(root), str(port),
         str(log), str(fail_first)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_snakemake(workdir: Path, config: dict, *extra: str, timeout: int = 600):
    """Run the workflow in ``workdir`` with ``config`` written as its config file."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [
        *SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(cfg),
        "--cores", "2", *extra,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def demo_config() -> dict:
    """The shipped demo config with absolute input paths."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["inputs"] = [str(REPO / p) for p in cfg["inputs"]]
    return cfg


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, worker_id) -> Path:
    """Run the whole workflow once on the embedded demo; return its working directory.

    Once for the whole test run: under pytest-xdist the first worker to need it runs it under
    a file lock in the folder the workers share, and the others wait for it and reuse it.
    Tests that run Snakemake inside it (dry runs, the report) share the xdist group
    ``demo_dir``, so they never run at the same time.
    """
    if worker_id == "master":
        workdir = tmp_path_factory.mktemp("demo")
        proc = run_snakemake(workdir, demo_config())
        assert proc.returncode == 0, proc.stderr[-4000:]
        return workdir
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent
    workdir = shared / "demo"
    failed = shared / "demo.failed"
    with FileLock(str(shared / "demo.lock")):
        if failed.exists():
            pytest.fail(f"the demo run failed (in another worker): {failed.read_text()[-4000:]}")
        if not (workdir / "results" / "catalog.json").exists():
            proc = run_snakemake(workdir, demo_config())
            if proc.returncode != 0:
                failed.write_text(proc.stderr)
            assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


def pytest_configure(config):
    """Compile the numba kernels once, before any worker starts (``costack.precompile``, as the
    Snakefile's ``onstart`` does): otherwise, on a new cache, the workers' first flows and
    tie points and the workflow runs they start all compile the same kernels at once on the
    same cores (a cold suite: 6:40 instead of about 5 min)."""
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        from costack.precompile import ensure_compiled

        ensure_compiled(processes=2)


def pytest_collection_modifyitems(config, items):
    """The SLURM test first: it mostly waits on the scheduler, so under pytest-xdist it runs
    beside the rest of the suite instead of after it. Then the other end-to-end (``workflow``)
    tests, the longest, so that the many short tests fill the workers at the end instead of
    one long workflow test running alone on the last worker (measured: the two verdict runs
    came last, 16 s with one worker busy)."""
    items.sort(key=lambda item: (item.get_closest_marker("slurm") is None,
                                 item.get_closest_marker("workflow") is None))  # fmt: skip


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core plus one, since the SLURM test (first in the order)
    keeps its worker mostly waiting on the scheduler for about three minutes: with only one
    worker per core, one core would idle meanwhile (2 cores: suite 5:22 with 2 workers)."""
    return min(4, (os.cpu_count() or 1) + 1)


#: Chromium's flags for the browser tests (headless, no sandbox as root, nothing fetched)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic"]  # fmt: skip


def chromium() -> str:
    """Debian's Chromium for the browser tests (playwright drives it); the test is skipped when
    it or playwright is absent (.ci/run installs both)."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium not installed (Debian's package; .ci/run installs it)")
    pytest.importorskip("playwright.sync_api")
    return path
