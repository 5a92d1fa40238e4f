"""Hostile inputs (issue 36): items, rasters, configs and servers made by someone who wants this
machine to read what it should not, to hang, to keep a corrupt result or to give a wrong value.

Every case goes through the command line (``costack check``, ``costack discover``, the pixel
steps, ``snakemake``) in a subprocess with a time limit, against real local services: HTTP
servers on 127.0.0.1 (``tests/hostile_server.py``: redirects, stalls, gzip bombs, a log of every
request), FIFOs, symlinks, a real full tmpfs. Each ends refused or failed with one line
(``costack: error: ...``), or correct; with no traceback, no hang, nothing left behind, and no
request reaching an address the user did not allow (the disallowed server's log stays empty).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from conftest import CHROMIUM_FLAGS, REPO, chromium, scene, write_item, write_raster
from rasterio.transform import Affine

T = Affine(10, 0, 500_000, 0, -10, 5_000_000)
CLI = [sys.executable, "-m", "costack.cli"]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
#: Every case must end within this (seconds); the code's own limits are set far below it.
LIMIT = 60


#: Cases that fail before the fixes of issue 36 (each reproduced: strict xfail); emptied as
#: the fixes landed (every case passes now; a new open case goes here, as strict xfail).
OPEN: set[str] = set()


@pytest.fixture(autouse=True)
def _open_case(request):
    if request.node.name in OPEN:
        request.applymarker(pytest.mark.xfail(strict=True, reason="issue 36: not fixed yet"))


# ---------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def hostile_server(root: Path):
    """A :mod:`hostile_server` on 127.0.0.1 in its own process; yields a :class:`Server`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root.mkdir(parents=True, exist_ok=True)
    server = Server(root, port)
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "hostile_server.py"), str(root), str(port),
         str(server.log), str(server.routes_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Server:
    """A running hostile server: its root folder, URL, routes and request log."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.netloc = f"127.0.0.1:{port}"
        self.log = root.parent / f"requests-{port}.jsonl"
        self.routes_file = root.parent / f"routes-{port}.json"
        self.routes_file.write_text("{}")

    def route(self, path: str, **behaviour) -> str:
        routes = json.loads(self.routes_file.read_text())
        routes[path] = behaviour
        self.routes_file.write_text(json.dumps(routes))
        return self.url + path

    def requests(self) -> list[dict]:
        if not self.log.is_file():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def servers(tmp_path):
    """Two servers: ``allowed`` (listed in allowed_sources by host:port) and ``other``, which
    no case may reach (its request log must stay empty)."""
    with hostile_server(tmp_path / "www-a") as a, hostile_server(tmp_path / "www-b") as b:
        write_raster(b.root / "x.tif", scene(64, 64, 9), transform=T)
        yield a, b


def nothing_reached(server: Server) -> None:
    """No request reached ``server`` (the one no item may make this machine ask)."""
    assert server.requests() == [], f"requests reached {server.url}: {server.requests()}"


def run(cmd: list[str], cwd: Path, timeout: float = LIMIT, env: dict | None = None):
    """Run ``cmd``; a hang past ``timeout`` fails the test (the process group is killed)."""
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full_env, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        pytest.fail(f"hang: {' '.join(map(str, cmd))[:200]} still running after {timeout} s")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def one_line(proc) -> str:
    """The one ``costack: error:`` line of a failed command (no traceback)."""
    assert proc.returncode != 0, proc.stdout[-1000:] + proc.stderr[-1000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("costack: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def check(config: dict, folder: Path, timeout: float = LIMIT, env: dict | None = None):
    """``costack check --configfile`` on ``config``."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return run([*CLI, "check", "--configfile", str(cfg)], folder, timeout, env)


def check_text(text: str, folder: Path, timeout: float = LIMIT):
    """``costack check`` on a config file written as ``text``."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "config.yaml"
    cfg.write_text(text)
    return run([*CLI, "check", "--configfile", str(cfg)], folder, timeout)


def dry_run(config: dict, folder: Path, timeout: float = LIMIT):
    """``snakemake -n`` on ``config`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(folder), "--configfile",
                str(cfg), "-n", "--cores", "1"], folder, timeout)  # fmt: skip


def one_asset(item: Path, **extra) -> dict:
    return {"inputs": [str(item)], "assets": "1.nir", "reference": "1.nir", **extra}


def vrt_over(path: str, width: int = 64, height: int = 64) -> str:
    """A VRT whose one band is a simple source reading ``path`` (as GDAL would open it)."""
    return f"""<VRTDataset rasterXSize="{width}" rasterYSize="{height}">
  <SRS>EPSG:32631</SRS>
  <GeoTransform>500000, 10, 0, 5000000, 0, -10</GeoTransform>
  <VRTRasterBand dataType="Float32" band="1">
    <SimpleSource><SourceFilename relativeToVRT="0">{path}</SourceFilename>
      <SourceBand>1</SourceBand></SimpleSource>
  </VRTRasterBand>
</VRTDataset>
"""


def raw_vrt_over(path: str, width: int = 64, height: int = 8) -> str:
    """A VRT raw band over the bytes of ``path`` (any file: /etc/shadow...)."""
    return f"""<VRTDataset rasterXSize="{width}" rasterYSize="{height}">
  <SRS>EPSG:32631</SRS>
  <GeoTransform>500000, 10, 0, 5000000, 0, -10</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">
    <SourceFilename relativetoVRT="0">{path}</SourceFilename>
    <ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>{width}</LineOffset>
  </VRTRasterBand>
</VRTDataset>
"""


@pytest.fixture
def secret(tmp_path) -> Path:
    """A file outside every item's folder that no item may make this machine read: a valid
    GeoTIFF (so only the gate can stop it) in its own folder."""
    return write_raster(tmp_path / "private" / "secret.tif", scene(64, 64, 4) + 1000,
                        transform=T)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 1. one gate for every path GDAL opens


def test_file_url_to_vsicurl_is_refused(tmp_path, servers):
    _, b = servers
    item = write_item(tmp_path / "item", "x", {"nir": {"href": f"file:///vsicurl/{b.url}/x.tif"}})
    line = one_line(check(one_asset(item), tmp_path / "run"))
    assert line.startswith("costack: error: assets: 1.nir:"), line
    nothing_reached(servers[1])


def test_redirect_from_an_allowed_host_to_another_is_refused(tmp_path, servers):
    a, b = servers
    href = a.route("/nir.tif", redirect=f"{b.url}/x.tif")
    item = write_item(tmp_path / "item", "x", {"nir": {"href": href}})
    line = one_line(check(one_asset(item, allowed_sources=[a.netloc]), tmp_path / "run"))
    assert "redirect" in line and b.netloc in line, line
    assert a.requests(), "the allowed server was not asked"
    nothing_reached(servers[1])


def test_redirect_within_the_allowed_host_is_followed(tmp_path, servers):
    a, _ = servers
    write_raster(a.root / "real.tif", scene(64, 64, 3), transform=T)
    href = a.route("/nir.tif", redirect="/real.tif")
    item = write_item(tmp_path / "item", "x", {"nir": {"href": href}})
    proc = check(one_asset(item, allowed_sources=[a.netloc]), tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    nothing_reached(servers[1])


def test_local_vrt_reaching_a_server_is_refused(tmp_path, servers):
    _, b = servers
    folder = tmp_path / "item"
    folder.mkdir()
    (folder / "nir.vrt").write_text(vrt_over(f"/vsicurl/{b.url}/x.tif"))
    item = write_item(folder, "x", {"nir": {"href": "./nir.vrt"}})
    line = one_line(check(one_asset(item), tmp_path / "run"))
    assert line.startswith("costack: error: assets: 1.nir:") and "VRT" in line, line
    nothing_reached(servers[1])


def test_remote_vrt_on_an_allowed_host_reaching_another_is_refused(tmp_path, servers):
    a, b = servers
    (a.root / "nir.vrt").write_text(vrt_over(f"/vsicurl/{b.url}/x.tif"))
    item = write_item(tmp_path / "item", "x", {"nir": {"href": f"{a.url}/nir.vrt"}})
    line = one_line(check(one_asset(item, allowed_sources=[a.netloc]), tmp_path / "run"))
    assert line.startswith("costack: error: assets: 1.nir:") and "VRT" in line, line
    nothing_reached(servers[1])


@pytest.mark.parametrize("target", ["secret", "/etc/passwd"])
def test_vrt_raw_band_over_a_private_file_is_refused(tmp_path, secret, target):
    path = str(secret) if target == "secret" else target
    folder = tmp_path / "item"
    folder.mkdir()
    (folder / "nir.vrt").write_text(raw_vrt_over(path))
    item = write_item(folder, "x", {"nir": {"href": "./nir.vrt"}})
    line = one_line(check(one_asset(item), tmp_path / "run"))
    assert line.startswith("costack: error: assets: 1.nir:") and "VRT" in line, line


def test_vrt_over_a_local_file_outside_the_item_is_refused(tmp_path, secret):
    folder = tmp_path / "item"
    folder.mkdir()
    (folder / "nir.vrt").write_text(vrt_over(str(secret)))
    item = write_item(folder, "x", {"nir": {"href": "./nir.vrt"}})
    line = one_line(check(one_asset(item), tmp_path / "run"))
    assert line.startswith("costack: error: assets: 1.nir:"), line


def test_remote_item_naming_a_local_file_is_refused(tmp_path, servers, secret):
    a, _ = servers
    write_item(a.root, "remote", {"nir": {"href": secret.as_uri()}})
    cfg = one_asset(tmp_path / "unused", allowed_sources=[a.netloc])
    cfg["inputs"] = [f"{a.url}/item.json"]
    line = one_line(check(cfg, tmp_path / "run"))
    assert line.startswith("costack: error: assets: 1.nir:") and "local" in line, line
    nothing_reached(servers[1])


@pytest.mark.parametrize("form", ["absolute", "file_url", "dotdot", "symlink"])
def test_local_file_outside_the_items_folder_is_refused(tmp_path, secret, form):
    folder = tmp_path / "item"
    folder.mkdir()
    if form == "symlink":
        (folder / "nir.tif").symlink_to(secret)
    href = {"absolute": str(secret), "file_url": secret.as_uri(),
            "dotdot": "../private/secret.tif", "symlink": "./nir.tif"}[form]  # fmt: skip
    item = write_item(folder, "x", {"nir": {"href": href}})
    line = one_line(check(one_asset(item), tmp_path / "run"))
    assert line.startswith("costack: error: assets: 1.nir:") and "allowed_paths" in line, line


def test_allowed_paths_lets_an_item_name_files_elsewhere(tmp_path, secret):
    item = write_item(tmp_path / "item", "x", {"nir": {"href": str(secret)}})
    proc = check(one_asset(item, allowed_paths=[str(secret.parent)]), tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "gdal_prefix"])
def test_special_files_are_refused_without_opening_them(tmp_path, kind):
    folder = tmp_path / "item"
    folder.mkdir()
    if kind == "fifo":
        os.mkfifo(folder / "nir.tif")
        href = "./nir.tif"
    elif kind == "directory":
        (folder / "nir.tif").mkdir()
        href = "./nir.tif"
    elif kind == "device":
        (folder / "nir.tif").symlink_to("/dev/zero")
        href = "./nir.tif"
    else:
        write_raster(folder / "real.tif", scene(), transform=T)
        href = f"GTIFF_DIR:1:{folder / 'real.tif'}"
    item = write_item(folder, "x", {"nir": {"href": href}})
    line = one_line(check(one_asset(item), tmp_path / "run", timeout=30))
    assert line.startswith("costack: error: assets: 1.nir:"), line


def test_fifo_does_not_hang_a_dry_run(tmp_path):
    folder = tmp_path / "item"
    folder.mkdir()
    os.mkfifo(folder / "nir.tif")
    item = write_item(folder, "x", {"nir": {"href": "./nir.tif"}})
    proc = dry_run(one_asset(item), tmp_path / "run", timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "costack: error: assets: 1.nir:" in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# 4-5. items and configs: impossible values refused before any job, bounded time and memory


def _item_text(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "item.json").write_text(text)
    return folder / "item.json"


def _local_item(folder: Path, **fields) -> Path:
    """An item with one asset ``nir`` on a real raster beside it, with ``fields`` added."""
    write_raster(folder / "nir.tif", (scene(64, 64, 2) * 100 + 1000).astype("uint16"),
                 transform=T)  # fmt: skip
    return write_item(folder, "x", {"nir": {"href": "./nir.tif", **fields}})


def test_stalled_item_server_is_a_timeout(tmp_path, servers):
    a, _ = servers
    write_item(a.root, "remote", {"nir": {"href": "./nir.tif"}})
    url = a.route("/item.json", stall=40)
    cfg = one_asset(tmp_path / "unused", allowed_sources=[a.netloc], http_timeout=2)
    cfg["inputs"] = [url]
    start = time.monotonic()
    line = one_line(check(cfg, tmp_path / "run", timeout=40))
    assert line.startswith("costack: error: inputs[1]:") and "timed out" in line, line
    assert time.monotonic() - start < 25
    nothing_reached(servers[1])


def test_gzip_bomb_item_is_refused_at_the_size_cap(tmp_path, servers):
    a, _ = servers
    url = a.route("/item.json", gzip_bomb=512 << 20)
    cfg = one_asset(tmp_path / "unused", allowed_sources=[a.netloc])
    cfg["inputs"] = [url]
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = run(["/usr/bin/time", "-f", "maxrss_kb=%M", *CLI, "check", "--configfile",
                str(folder / "config.yaml")], folder, timeout=40)  # fmt: skip
    line = one_line(proc)
    assert line.startswith("costack: error: inputs[1]:") and "max_item_bytes" in line, line
    rss_mb = int(proc.stderr.rsplit("maxrss_kb=", 1)[1].split()[0]) / 1000
    assert rss_mb < 400, f"peak memory {rss_mb:.0f} MB"
    nothing_reached(servers[1])


@pytest.mark.parametrize("where", ["asset", "item"])
def test_duplicate_keys_in_an_item_are_refused(tmp_path, where):
    folder = tmp_path / "item"
    item = _local_item(folder)
    text = item.read_text()
    if where == "asset":  # the asset's href given twice: which one would be read?
        text = text.replace('"href": "./nir.tif"', '"href": "./nir.tif", "href": "./other.tif"')
        key = "href"
    else:
        text = text.replace('"type": "Feature"', '"type": "Feature", "id": "twice"', 1)
        key = "id"
    item.write_text(text)
    line = one_line(check(one_asset(item), tmp_path / "run"))
    assert line.startswith("costack: error: inputs[1]:") and f"'{key}'" in line, line


def test_duplicate_keys_in_the_config_are_refused(tmp_path):
    item = _local_item(tmp_path / "item")
    text = f"inputs: [{item}]\nassets: 1.nir\nreference: 1.nir\nreference: 1.nir\n"
    line = one_line(check_text(text, tmp_path / "run"))
    assert line.startswith("costack: error: --configfile:") and "'reference'" in line, line


def test_duplicate_keys_in_snakemakes_configfile_are_refused(tmp_path):
    """Snakemake's own loader keeps the last of a key given twice: the workflow reads the
    config files again strictly."""
    item = _local_item(tmp_path / "item")
    folder = tmp_path / "run"
    folder.mkdir()
    cfg = folder / "config.yaml"
    cfg.write_text(f"inputs: [{item}]\nassets: 1.nir\nreference: 1.nir\nreference: 1.nir\n")
    proc = run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(folder), "--configfile",
                str(cfg), "-n", "--cores", "1"], folder)  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "costack: error: --configfile:" in proc.stderr and "'reference'" in proc.stderr


def test_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("inputs: *a9\nassets: 1.nir\nreference: 1.nir")
    start = time.monotonic()
    line = one_line(check_text("\n".join(lines) + "\n", tmp_path / "run", timeout=30))
    assert line.startswith("costack: error: --configfile:") and "alias" in line, line
    assert time.monotonic() - start < 15


def test_deeply_nested_yaml_is_one_line(tmp_path):
    text = "inputs: " + "[" * 100_000 + "]" * 100_000 + "\nassets: 1.nir\nreference: 1.nir\n"
    line = one_line(check_text(text, tmp_path / "run"))
    assert line.startswith("costack: error: --configfile:"), line


@pytest.mark.parametrize("wkt", ["POLYGON((nan 0, 1 0, 1 1, 0 1, nan 0))",
                                 "POLYGON((0 0, inf 0, 1 1, 0 0))"])  # fmt: skip
def test_non_finite_aoi_is_one_line(tmp_path, wkt):
    item = _local_item(tmp_path / "item")
    line = one_line(check(one_asset(item, aoi=wkt), tmp_path / "run"))
    assert line.startswith("costack: error: aoi:"), line


@pytest.mark.parametrize("bands", [{"name": "B08", "common_name": "nir"},
                                   [[{"name": "B08", "common_name": "nir"}]],
                                   ["nir"], "nir"])  # fmt: skip
def test_eo_bands_of_the_wrong_shape_are_one_line(tmp_path, bands):
    folder = tmp_path / "item"
    write_raster(folder / "b08.tif", scene(), transform=T)
    item = write_item(folder, "x", {"B08": {"href": "./b08.tif", "eo:bands": bands}})
    line = one_line(check(one_asset(item), tmp_path / "run"))
    assert line.startswith("costack: error: inputs[1]:") and "eo:bands" in line, line


@pytest.mark.parametrize(("field", "value"), [
    ("scale", float("nan")), ("scale", 0), ("scale", 1e39), ("scale", "abc"),
    ("offset", float("inf")), ("offset", float("nan")), ("offset", "abc"), ("offset", [1]),
    ("nodata", {"x": 1}),
])  # fmt: skip
def test_impossible_raster_bands_values_are_refused_before_any_job(tmp_path, field, value):
    item = _local_item(tmp_path / "item", **{"raster:bands": [{field: value}]})
    line = one_line(check(one_asset(item), tmp_path / "run"))
    assert line.startswith("costack: error: inputs[1]:") and field in line, line


def test_raster_bands_given_as_an_object_is_one_line(tmp_path):
    item = _local_item(tmp_path / "item", **{"raster:bands": {"scale": 2}})
    line = one_line(check(one_asset(item), tmp_path / "run"))
    assert line.startswith("costack: error: inputs[1]:") and "raster:bands" in line, line


# ---------------------------------------------------------------------------------------------
# band math: a nodata operand gives nodata, whatever the operation (comparisons, logic, where)


@pytest.mark.parametrize("expression", [
    "(> 1.nir (/ 1.nir 0))", "(== (/ 1.nir 0) (/ 1.nir 0))", "(& 1.nir (/ 1.nir 0))",
    "(| 1.nir (/ 1.nir 0))", "(where (> 1.nir (/ 1.nir 0)) 1 2)", "(!= (log10 (- 0 1.nir)) 0)",
    "(< (sqrt (- 0 1.nir)) 1)",
])  # fmt: skip
def test_band_math_with_a_nodata_operand_gives_nodata(tmp_path, expression):
    data = scene(64, 64, 5)
    data = data - data.min() + 1  # positive: 1.nir / 0 is +inf, log10 and sqrt of -1.nir NaN
    write_raster(tmp_path / "nir.tif", data, transform=T)
    out = tmp_path / "out.tif"
    proc = run([*CLI, "bandmath", f"x:{expression}", "--asset", f"1.nir={tmp_path / 'nir.tif'}",
                str(out)], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    with rasterio.open(out) as src:
        got = src.read(1, masked=True)
    assert np.ma.getmaskarray(got).all() or np.isnan(np.ma.filled(got, np.nan)).all(), got


def test_band_math_comparison_of_nodata_pixels_is_nodata_there_only(tmp_path):
    data = scene(64, 64, 5)
    data[10:20, 10:20] = np.nan
    write_raster(tmp_path / "nir.tif", data, transform=T, nodata=float("nan"))
    out = tmp_path / "out.tif"
    proc = run([*CLI, "bandmath", "x:(== 1.nir 1.nir)", "--asset",
                f"1.nir={tmp_path / 'nir.tif'}", str(out)], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    with rasterio.open(out) as src:
        got = src.read(1)
    expected = np.where(np.isnan(data), np.nan, 1.0)
    np.testing.assert_array_equal(got, expected.astype("float32"))


# ---------------------------------------------------------------------------------------------
# 3. every raster a job writes is complete or absent (a real full disk)


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str = "8m"):
    """A real tmpfs of ``size`` mounted on ``folder`` (root only: skips otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr[:200]}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def _fill_leaving(disk: Path, free: int) -> None:
    """Fill ``disk`` so that ``free`` bytes stay free."""
    import shutil

    (disk / "filler").unlink(missing_ok=True)
    with open(disk / "filler", "wb") as fh:
        fh.write(b"\1" * max(0, shutil.disk_usage(disk).free - free))


def _pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.fixture(scope="module")
def step_inputs(tmp_path_factory) -> Path:
    """A 512 x 512 secondary (noise: about 0.9 MB compressed) and a zero flow."""
    folder = tmp_path_factory.mktemp("steps")
    noise = np.random.default_rng(0).random((512, 512)).astype("float32")
    write_raster(folder / "sec.tif", noise, transform=T)
    write_raster(folder / "flow.tif", np.zeros((2, 512, 512), "float32"), transform=T)
    return folder


STEPS = {
    "warp": lambda d, out: ["warp", str(d / "sec.tif"), str(d / "flow.tif"), str(out)],
    "coregister": lambda d, out: ["coregister", str(d / "sec.tif"), str(out)],
    "bandmath": lambda d, out: ["bandmath", "x:(* 2 1.nir)", "--asset",
                                f"1.nir={d / 'sec.tif'}", str(out)],
    "cog": lambda d, out: ["cog", str(d / "sec.tif"), str(out)],
}  # fmt: skip


@pytest.mark.parametrize("step", list(STEPS))
def test_a_full_disk_leaves_a_complete_raster_or_none(tmp_path, step_inputs, step):
    """The step writes its raster on a real tmpfs that lacks 0 to 100 kB for it (GDAL's
    ENOSPC then falls on the pixels, or only on the TIFF directory written last): it fails with
    one line and leaves nothing, or succeeds with a raster that reads back whole; once space is
    freed, the same command writes the complete raster."""
    reference = tmp_path / "reference.tif"
    proc = run([*CLI, *STEPS[step](step_inputs, reference)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    size, expected = reference.stat().st_size, _pixels(reference)
    with small_tmpfs(tmp_path / "disk") as disk:
        out = disk / "results" / "out.tif"
        out.parent.mkdir()
        for short in (0, 4096, 20_000, 100_000):
            _fill_leaving(disk, size - short)
            proc = run([*CLI, *STEPS[step](step_inputs, out)], tmp_path)
            if proc.returncode == 0:
                np.testing.assert_array_equal(_pixels(out), expected)
            else:
                assert "No space left" in one_line(proc) or "no space" in one_line(proc).lower()
                assert sorted(p.name for p in out.parent.iterdir()) == [], short
            out.unlink(missing_ok=True)
        (disk / "filler").unlink()
        proc = run([*CLI, *STEPS[step](step_inputs, out)], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        np.testing.assert_array_equal(_pixels(out), expected)


# ---------------------------------------------------------------------------------------------
# 2 and 6. whole runs: item text is data; a failed run publishes no COG; links through a symlink

HOSTILE_PLATFORM = (
    "</script><script>window.pwned = 1; document.title = 'pwned'</script><img src=x "
    "onerror='window.pwned=2'>\ncostack: registration of dataset 7 (forged): pass "
    "$\\frac{1}{$\x1b[2J\r"
)


def _demo_pair(folder: Path, platform: str | None = None, secondary=None) -> dict:
    """The demo's Sentinel-2 (reference) and Landsat 8 datasets copied under ``folder``, the
    Landsat item's platform set to ``platform`` and its NIR replaced by ``secondary(data,
    nodata)`` when given; the config of a two-dataset run on their NIR."""
    import shutil

    for name in ("s2", "l8"):
        shutil.copytree(REPO / "resources" / "demo" / name, folder / name)
    item = json.loads((folder / "l8" / "item.json").read_text())
    if platform is not None:
        item["properties"]["platform"] = platform
    (folder / "l8" / "item.json").write_text(json.dumps(item))
    if secondary is not None:
        path = folder / "l8" / "B05.tif"
        with rasterio.open(path) as src:
            profile, data = src.profile, src.read(1)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(secondary(data, profile.get("nodata")).astype(data.dtype), 1)
    return {"inputs": [str(folder / "s2" / "item.json"), str(folder / "l8" / "item.json")],
            "assets": "1.nir,2.nir", "reference": "1.nir", "item_id": "hostile"}  # fmt: skip


def _snakemake(workdir: Path, config: dict, *extra: str, timeout: float = 600):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    cfg = str(workdir / "config.yaml")
    return run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", cfg,
                "--cores", "2", *extra], workdir, timeout)  # fmt: skip


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A whole run whose secondary item's platform is markup, a forged log line, mathtext and
    terminal control characters, with ``results/`` a symlink to another folder."""
    root = tmp_path_factory.mktemp("hostile_run")
    config = _demo_pair(root / "data", HOSTILE_PLATFORM)
    work = root / "work"
    work.mkdir()
    # one level deeper than work/results: a link made relative to the resolved path (or
    # joined lexically to it) then misses its file
    (root / "elsewhere" / "deeper" / "results").mkdir(parents=True)
    (work / "results").symlink_to(root / "elsewhere" / "deeper" / "results")
    return work, _snakemake(work, config)


@pytest.mark.workflow
def test_item_text_cannot_forge_log_lines_or_kill_a_job(hostile_run):
    work, proc = hostile_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    verdicts = [x for x in proc.stderr.splitlines() if x.startswith("costack: registration")]
    assert len(verdicts) == 1 and verdicts[0].startswith("costack: registration of dataset 2 ")
    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr.replace("\r\n", "\n")


@pytest.mark.workflow
def test_item_text_runs_no_script_in_the_report(hostile_run, tmp_path):

    work, proc = hostile_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = tmp_path / "report.html"
    made = run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
                str(work / "config.yaml"), "--report", str(report)], work, 300)  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    browser = chromium()
    from playwright import sync_api as playwright

    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=CHROMIUM_FLAGS)
        page = b.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(report.as_uri())
        page.get_by_text("Results").first.wait_for(timeout=180_000)
        for label in ("Results", "Registration", "dataset 2"):  # "dataset 2": a subcategory
            if page.get_by_text(label).count():  # in some Snakemake versions
                page.get_by_text(label).first.click()
                page.wait_for_timeout(300)
        for row in page.locator("tr", has_text="models and residual").all()[:1]:
            row.locator("a[iconname=eye]").first.click()
            page.wait_for_timeout(800)
        pwned, title = page.evaluate("[window.pwned, document.title]")
        b.close()
    assert pwned is None and title != "pwned" and not dialogs, (pwned, title, dialogs)
    # and the markup is nowhere in the page's source as markup (Snakemake writes a report
    # figure's params into a script block unescaped: item text is in none of them)
    assert "<script>window.pwned" not in report.read_text(encoding="utf-8")


@pytest.mark.workflow
def test_provenance_links_hold_through_a_symlinked_results_folder(hostile_run):
    work, proc = hostile_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    item_path = work / "results" / "stack" / "hostile.json"
    item = json.loads(item_path.read_text())
    derived = [ln["href"] for ln in item["links"] if ln["rel"] == "derived_from"]
    sources = [a["costack:source"]["href"] for a in item["assets"].values()
               if "costack:source" in a]  # fmt: skip
    assert derived and sources
    for href in derived + sources:
        if "://" in href and not href.startswith("file://"):
            continue
        # as a STAC client joins it (lexically), and as the file system follows it (symlinks
        # first): both must reach the file
        joined = item_path.parent / href.removeprefix("file://")
        assert Path(os.path.normpath(joined)).is_file(), f"{href} (joined) from {item_path}"
        assert joined.resolve().is_file(), f"{href} (resolved) from {item_path}"


@pytest.mark.workflow
@pytest.mark.parametrize("kind", ["constant", "all_nodata"])
def test_a_failed_run_publishes_no_cog(tmp_path, kind):
    change = {
        "constant": lambda data, nodata: np.where(data == nodata, data, 7000),
        "all_nodata": lambda data, nodata: np.full_like(data, 0 if nodata is None else nodata),
    }[kind]
    config = _demo_pair(tmp_path / "data", secondary=change)
    proc = _snakemake(tmp_path / "work", config)
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert [x for x in proc.stderr.splitlines() if x.startswith("costack: error:")], proc.stderr
    stack = tmp_path / "work" / "results" / "stack"
    assert not stack.exists() or sorted(p.name for p in stack.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 5. bounded time on a raster server that stalls


def test_raster_server_stalling_in_the_header_is_a_timeout(tmp_path, servers):
    a, _ = servers
    write_raster(a.root / "nir.tif", scene(64, 64, 3), transform=T)
    href = a.route("/nir.tif", stall=100)
    item = write_item(tmp_path / "item", "x", {"nir": {"href": href}})
    cfg = one_asset(item, allowed_sources=[a.netloc], http_timeout=2, http_retries=1)
    start = time.monotonic()
    line = one_line(check(cfg, tmp_path / "run", timeout=45))
    assert line.startswith("costack: error: assets: 1.nir:") and "timed out" in line, line
    assert time.monotonic() - start < 30
    nothing_reached(servers[1])


@pytest.mark.workflow
def test_raster_server_stalling_on_pixels_fails_the_job_in_bounded_time(tmp_path, servers):
    a, _ = servers
    noise = np.random.default_rng(1).random((512, 512)).astype("float32")
    write_raster(a.root / "nir.tif", noise, transform=T)
    href = a.route("/nir.tif", stall_after=16384)  # the header: GDAL reads 16 kB first
    item = write_item(tmp_path / "item", "x", {"nir": {"href": href}})
    cfg = one_asset(item, allowed_sources=[a.netloc], http_timeout=2, http_retries=1)
    start = time.monotonic()
    proc = _snakemake(tmp_path / "work", cfg, "results/colocated/1.nir.tif", timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("costack: error:")]
    assert len(errors) == 1 and "1.nir: cannot read" in errors[0], proc.stderr[-3000:]
    assert not (tmp_path / "work" / "results" / "colocated" / "1.nir.tif").exists()
    assert elapsed < 90, elapsed
    nothing_reached(servers[1])
