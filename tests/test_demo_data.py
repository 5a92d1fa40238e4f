"""The embedded demo data is what its generator writes: `resources/generate_demo.py` rebuilds
`resources/demo` byte for byte (the README's provenance of the demo, and the speckle draws of
`bench/sar_bench.py`, rest on it)."""

from __future__ import annotations

import subprocess
import sys

from conftest import DEMO, REPO


def test_generate_demo_rebuilds_the_embedded_demo_byte_for_byte(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(REPO / "resources" / "generate_demo.py"), str(out)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    made = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    shipped = sorted(p.relative_to(DEMO) for p in DEMO.rglob("*") if p.is_file())
    assert made == shipped
    differ = [str(p) for p in made if (out / p).read_bytes() != (DEMO / p).read_bytes()]
    assert not differ, f"generate_demo.py no longer writes these embedded files: {differ}"


def test_sar_extra_moves_only_the_sars_ground(tmp_path):
    """``--sar-extra`` (bench/sar_pairs_bench.py's displaced demo pair) adds its field to the
    SAR's misregistration: the SAR's truth moves by the field, while its GCPs (geometry) and the
    other datasets stay the embedded demo's."""
    import json

    import numpy as np
    import rasterio

    out = tmp_path / "demo"
    extra = {"shift": [0.5, -0.25], "waves": [[0.3, 0.2, 150.0, 0.0]]}
    cmd = [sys.executable, str(REPO / "resources" / "generate_demo.py"), str(out)]
    proc = subprocess.run([*cmd, "--sar-extra", json.dumps(extra)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("s2/nir.tif", "l8/B05.tif", "l8/truth.tif"):
        assert (out / name).read_bytes() == (DEMO / name).read_bytes(), name
    with rasterio.open(out / "s1/truth.tif") as a, rasterio.open(DEMO / "s1/truth.tif") as b:
        moved, native = a.read(), b.read()
    delta = moved - native
    assert abs(float(delta[0].mean()) - 0.5) < 0.05 and abs(float(delta[1].mean()) + 0.25) < 0.05
    assert 0.15 < float(delta[0].std()) < 0.3  # the wave: 0.3 px amplitude, std 0.3 / sqrt(2)
    vv = "s1/s0_db_c_vv.tif"
    with rasterio.open(out / vv) as a, rasterio.open(DEMO / vv) as b:
        gcps = [[(g.row, g.col, g.x, g.y) for g in src.gcps[0]] for src in (a, b)]
        assert gcps[0] == gcps[1] and len(gcps[0]) == 210
        assert not np.array_equal(a.read(1), b.read(1))  # the ground it images moved
