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
