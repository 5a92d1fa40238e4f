"""`costack catalog` by hand, given what the rule build_catalog is given (the expressions in the
`name:(expr)` form the rule passes), writes the rule's item and catalog byte for byte; an
expression given with another expression's COG is refused."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.workflow, pytest.mark.xdist_group("demo_dir")]


def _argv(demo_run: Path, expressions: list[str]) -> list[str]:
    cfg = yaml.safe_load((demo_run / "config.yaml").read_text())
    argv = [sys.executable, "-m", "costack.cli", "catalog", "results/discover/manifest.csv",
            "results/grid/grid.json", cfg["reference"], "results/catalog.json",
            f"results/stack/{cfg['item_id']}.json", "--item-id", cfg["item_id"],
            "--qc", "results/qc/summary.json"]  # fmt: skip
    for key in cfg["assets"].split(","):
        argv += ["--asset", f"{key}=results/stack/{key}.tif"]
    for spec in expressions:
        argv += ["--expression", spec]
    for n in (2, 3):
        spec = (f"{n}=results/stack/{n}-displacement.tif,results/stack/{n}-confidence.tif,"
                f"results/flow/{n}.json")  # fmt: skip
        if (demo_run / "results" / "stack" / f"{n}-support.tif").is_file():  # issue 35's
            spec += f",results/stack/{n}-support.tif"
        argv += ["--flow", spec]
    return argv


def test_catalog_by_hand_is_the_rules_item_byte_for_byte(demo_run: Path):
    """In a copy of the demo's folder, the rule's item and catalog are removed and written again
    by hand: the same bytes, whether the expressions are given as `name:(expr)=COG` (the
    config's text) or `name=COG` (read from the COG's tag). A copy: the shared demo folder is
    read by other workers' tests meanwhile (removing its item there made them fail at random);
    beside it, at the same depth, since the item's provenance links are relative paths."""
    work = demo_run.with_name(demo_run.name + "-by-hand")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(demo_run, work, symlinks=True,
                    ignore=shutil.ignore_patterns(".snakemake"))  # fmt: skip
    try:
        _by_hand(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _by_hand(work: Path) -> None:
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    item = work / "results" / "stack" / f"{cfg['item_id']}.json"
    catalog = work / "results" / "catalog.json"
    theirs = {p: p.read_bytes() for p in (item, catalog)}
    whole = [f"{e}=results/stack/{e.split(':')[0]}.tif" for e in cfg["expressions"]]
    short = [f"{e.split(':')[0]}=results/stack/{e.split(':')[0]}.tif" for e in cfg["expressions"]]
    assert "ndvi:(norm_diff 1.nir 1.red)=results/stack/ndvi.tif" in whole
    for expressions in (whole, short):
        for p in theirs:
            p.unlink()
        proc = subprocess.run(_argv(work, expressions), cwd=work,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        for p, data in theirs.items():
            assert p.read_bytes() == data, (expressions, p.name)
    assert '"costack:expression": "(norm_diff 1.nir 1.red)"' in item.read_text()
    # as the rule does it: the COGs of results/cog published into results/stack with the item
    stack = work / "results" / "stack"
    cogs = {p.name: p.read_bytes() for p in stack.glob("*.tif")}
    argv = [a.replace("results/stack/", "results/cog/") if "=" in a and ".tif" in a else a
            for a in _argv(work, whole)]  # fmt: skip
    for p in (*theirs, *(stack / name for name in cogs)):
        p.unlink()
    proc = subprocess.run([*argv, "--publish-dir", "results/stack"], cwd=work,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for p, data in theirs.items():
        assert p.read_bytes() == data, ("published", p.name)
    assert {p.name: p.read_bytes() for p in stack.glob("*.tif")} == cogs
    for name in cogs:  # linked, not copied: one file's bytes on disk
        assert (stack / name).samefile(work / "results" / "cog" / name), name


def test_catalog_refuses_an_expression_with_another_ones_cog(demo_run: Path, tmp_path: Path):
    argv = _argv(demo_run, ["ndvi:(norm_diff 1.nir 1.red)=results/stack/sar_water_mask.tif"])
    argv[argv.index("results/catalog.json")] = str(tmp_path / "catalog.json")
    argv[argv.index("results/stack/costack-demo.json")] = str(tmp_path / "item.json")
    proc = subprocess.run(argv, cwd=demo_run, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "costack: error: --expression: results/stack/sar_water_mask.tif was computed as "
        "'sar_water_mask:(where (<= 3.s0_db_c_vv -18) 1 0)', given as "
        "'ndvi:(norm_diff 1.nir 1.red)'"), proc.stderr  # fmt: skip
    assert not (tmp_path / "catalog.json").exists() and not (tmp_path / "item.json").exists()
