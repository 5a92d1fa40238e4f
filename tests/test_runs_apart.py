"""Runs stay apart and `costack run` speaks once: a run of one's own configuration in a folder
that holds another run's results is refused before anything is written (snakemake and
`costack run --out` alike), a rerun of the same configuration is not; `costack run` prints each
of Snakemake's lines once, without "None" lines."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SNAKEMAKE, demo_config

pytestmark = [pytest.mark.workflow, pytest.mark.xdist_group("demo_dir")]


def _own_config(item_id: str = "my-stack") -> dict:
    """A user's configuration: the demo's optical datasets only, an item of its own."""
    cfg = demo_config()
    cfg["inputs"] = cfg["inputs"][:2]
    cfg["assets"] = "1.red,1.nir,2.red,2.nir"
    cfg["expressions"] = ["ndvi:(norm_diff 1.nir 1.red)"]
    cfg["item_id"] = item_id
    return cfg


def _snakemake_dry(workdir: Path, cfg: dict, name: str) -> subprocess.CompletedProcess:
    path = workdir.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile",
         str(path), "-n", "--cores", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _listing(folder: Path) -> list[str]:
    """The folder's files, but Snakemake's own .snakemake/ (a dry run makes it)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if ".snakemake" not in p.relative_to(folder).parts)  # fmt: skip


def test_a_run_into_another_runs_results_is_refused(demo_run: Path, tmp_path: Path):
    """The demo's published stack in a folder: a --configfile run of another item there is
    refused in one line naming the item and the fix (snakemake and costack run --out); so is one
    of the same item id whose assets differ (the demo's SAR COGs would lie unlisted beside the
    new item); the demo's own configuration passes. Nothing is written by the refused runs."""
    work = tmp_path / "work"
    shutil.copytree(demo_run / "results" / "stack", work / "results" / "stack")
    before = _listing(work)

    proc = _snakemake_dry(work, _own_config(), "mine")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("costack: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith(f"costack: error: results: {work / 'results' / 'stack'} holds "
                                "another run's item (costack-demo.json)"), errors  # fmt: skip
    assert "costack run --out DIR" in errors[0] and "snakemake -d DIR" in errors[0]

    same_id = _own_config("costack-demo")
    proc = _snakemake_dry(work, same_id, "same-id")
    assert proc.returncode != 0
    listed = "3-confidence.tif, 3-displacement.tif, 3-support.tif, ..."  # sorted, first three
    assert f"this run does not make ({listed})" in proc.stderr, proc.stderr[-3000:]

    cmd = [sys.executable, "-m", "costack.cli", "run", "--configfile", str(tmp_path / "mine.yaml"),
           "--out", str(work), "-n"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("costack: error: results: "), proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _listing(work) == before  # no config.yaml written, nothing else either

    proc = _snakemake_dry(work, demo_config(), "demo")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_what_the_folder_output_would_delete_is_refused(demo_run: Path, tmp_path: Path):
    """The catalog step's output is the folder results/stack as a whole, which Snakemake
    deletes before the step: a folder, a hidden file or a link of the user's in it, or a
    results/stack that is a link, stops the run in one line before anything is written; the
    demo's own stack (with Snakemake's .snakemake_timestamp) passes, and nothing is deleted."""
    work = tmp_path / "work"
    stack = work / "results" / "stack"
    shutil.copytree(demo_run / "results" / "stack", stack)
    assert (stack / ".snakemake_timestamp").is_file()
    assert _snakemake_dry(work, demo_config(), "demo").returncode == 0
    (stack / "notes").mkdir()
    (stack / "notes" / "mine.txt").write_text("keep me")
    (stack / ".mine").write_text("keep me too")
    (stack / "1.nir.tif.link").symlink_to(stack / "1.nir.tif")
    proc = _snakemake_dry(work, demo_config(), "demo")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("costack: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "3 entries this run does not make (.mine, 1.nir.tif.link, notes)" in errors[0], errors
    assert "would delete them" in errors[0] and "costack run --out DIR" in errors[0]
    assert (stack / "notes" / "mine.txt").read_text() == "keep me"
    assert (stack / ".mine").is_file()

    elsewhere = tmp_path / "served"
    shutil.move(stack, elsewhere)
    stack.symlink_to(elsewhere, target_is_directory=True)
    proc = _snakemake_dry(work, demo_config(), "demo")
    assert proc.returncode != 0
    assert f"costack: error: results: {stack} is a link" in proc.stderr, proc.stderr[-3000:]
    assert (elsewhere / "notes" / "mine.txt").is_file()


def test_costack_run_prints_each_line_once(demo_run: Path, tmp_path: Path):
    """`costack run` finishing a copy of the demo's run (its overview page and item removed):
    Snakemake's progress once per step, no line twice under Snakemake's logger name, no "None"
    line; the run ends with the catalog's path and verify passes on its item."""
    out = tmp_path / "run"
    shutil.copytree(demo_run, out, symlinks=True)
    for name in ("report.html", "catalog.json", "stack/costack-demo.json"):
        (out / "results" / name).unlink()
    cmd = [sys.executable, "-m", "costack.cli", "run", "--configfile",
           str(demo_run / "config.yaml"), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in lines if "snakemake.logging" in line
                or re.search(r"(^|: )None$", line)], lines  # fmt: skip
    done = [line for line in lines if line.endswith("steps (100%) done")]
    assert len(done) == 1, lines
    assert f"STAC catalog: {out / 'results' / 'catalog.json'}" in lines
    assert f"overview page (open it first): {out / 'results' / 'report.html'}" in lines
    proc = subprocess.run(
        [sys.executable, "-m", "costack.cli", "verify",
         str(out / "results" / "stack" / "costack-demo.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_snakemake_from_another_folder_without_a_config_says_what_to_give(tmp_path: Path):
    """`snakemake -s .../Snakefile` in a folder of one's own with no --configfile: one line
    naming --configfile and the command to give, not Snakemake's missing-file error."""
    proc = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-n", "--cores", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("costack: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith(f"costack: error: --configfile: {tmp_path} has no config/")
    assert f"snakemake -s {REPO / 'Snakefile'} --configfile my.yaml" in errors[0]
    assert not (tmp_path / "results").exists()


def test_what_counts_as_the_runs_own_stack_file():
    """The run's item, its assets' and expressions' COGs and any per-dataset product of its
    secondary datasets (N-displacement, N-confidence, N-support...) are its own; another
    item, another asset's COG, another dataset's product or a stray file are not."""
    from costack.plan import is_own_stack_file, preflight

    cfg = demo_config()
    cfg["expressions"] = ["ndvi:(norm_diff 1.nir 1.red)"]
    plan = preflight(cfg)
    own = ["costack-demo.json", "1.nir.tif", "3.s0_db_c_vh.tif", "ndvi.tif",
           "2-displacement.tif", "3-confidence.tif", "2-support.tif"]  # fmt: skip
    other = ["other.json", "4.nir.tif", "sar_water_mask.tif", "1-displacement.tif",
             "5-confidence.tif", "notes.txt", "ndvi.tif.aux.xml"]  # fmt: skip
    assert [n for n in own if not is_own_stack_file(n, plan)] == []
    assert [n for n in other if is_own_stack_file(n, plan)] == []
