"""costack run through Snakemake's API, the SLURM profile, and reruns."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, demo_config, run_snakemake

from costack.cli import build_parser

pytestmark = pytest.mark.workflow


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_costack_run_killed_and_resumed_reproduces_snakemake(demo_run, tmp_path):
    """`costack run` in another folder, on a copy of the demo data in yet another folder (so
    that no absolute path is shared with the demo run), killed (SIGKILL, as by an out-of-memory
    killer or a lost node) once the first flow exists, then run again with the same arguments:
    it unlocks the dead run's lock, resumes, and gives byte-identical COGs and the same item.
    One asset per optical dataset, both polarisations of the SAR one (its flow uses them) and
    no expressions: their COGs and item entries are the whole demo's, the same bytes."""
    import os
    import shutil
    import signal
    import time

    copy = tmp_path / "elsewhere" / "demo"
    shutil.copytree(REPO / "resources" / "demo", copy)
    cfg = demo_config()
    cfg["inputs"] = [str(copy / Path(p).parent.name / "item.json") for p in cfg["inputs"]]
    cfg.update(assets="1.nir,2.nir,3.s0_db_c_vv,3.s0_db_c_vh", expressions=[])
    argv = [sys.executable, "-m", "costack.cli", "run", "--out", str(tmp_path / "out"),
            "--cores", "2", "--assets", cfg["assets"], "--reference", cfg["reference"],
            "--item-id", cfg["item_id"]]  # fmt: skip
    for item in cfg["inputs"]:
        argv += ["--input", item]
    for expr in cfg["expressions"]:
        argv += ["--expression", expr]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (tmp_path / "out/results/flow/2.tif").exists():
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "out/results/catalog.json").exists()
    assert any((tmp_path / "out/.snakemake/locks").iterdir())  # the dead run's lock is left
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "was killed; unlocked, resuming" in out
    assert f"STAC catalog: {tmp_path / 'out' / 'results' / 'catalog.json'}" in out
    mine = sorted((tmp_path / "out" / "results" / "stack").glob("*.tif"))
    # the four assets and both datasets' displacement, confidence and support
    assert len(mine) == 10, [p.name for p in mine]
    for a in mine:
        assert _sha(a) == _sha(demo_run / "results" / "stack" / a.name), a.name
    # the STAC items are equal apart from timestamps and run timings
    import json

    def normalised(path: Path) -> dict:
        item = json.loads(path.read_text())
        for stats in (
            item["properties"].get("costack:registration", {}).get("datasets", {}).values()
        ):
            stats.pop("seconds", None)
            stats.pop("tiepoint_model", None)
        item["links"] = [lk for lk in item["links"] if lk["rel"] not in ("root", "parent", "self")]
        for lk in item["links"]:
            lk["href"] = Path(lk["href"]).name
        for asset in item["assets"].values():
            if "costack:source" in asset:
                asset["costack:source"]["href"] = Path(asset["costack:source"]["href"]).name
        return item

    name = f"{cfg['item_id']}.json"
    got = normalised(tmp_path / "out/results/stack" / name)
    demo = normalised(demo_run / "results/stack" / name)
    assert got["properties"].pop("costack:assets") == cfg["assets"].split(",")
    demo["properties"].pop("costack:assets")
    demo["assets"] = {k: v for k, v in demo["assets"].items() if k in got["assets"]}
    assert len(got["assets"]) == 10 and got == demo


def test_run_bad_input_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "costack.cli", "run", "--input", "nope.json", "--assets", "1.nir",
         "--reference", "1.nir", "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "costack: error: inputs[1]: nope.json does not exist; give the path or URL of a STAC item"
    )
    assert not (tmp_path / "o").exists()


def test_help_speaks_the_service_parameters():
    text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for phrase in ("input product reference", "list of single-band assets",
                   "reference asset in the list", "area of interest in WKT",
                   "new_asset_name:(expression)"):  # fmt: skip
        assert phrase in " ".join(text.split()), phrase


@pytest.mark.xdist_group("demo_dir")
def test_slurm_profile_dry_run_lists_jobs_with_resources(demo_run):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(demo_run),
         "--configfile", str(demo_run / "config.yaml"), "--profile", str(REPO / "profiles/slurm"),
         "-n", "--forceall"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert re.search(r"rule estimate_flow:.*?mem_mb=2048.*?runtime=20", text, re.S)
    assert re.search(r"rule colocate_asset:.*?mem_mb=1024", text, re.S)
    assert re.search(r"estimate_flow\s+2\n", text)


@pytest.mark.xdist_group("demo_dir")
def test_changing_one_expression_reruns_only_it_the_overview_and_the_catalog(demo_run):
    cfg = yaml.safe_load((demo_run / "config.yaml").read_text())
    cfg["expressions"][0] = "ndvi:(norm_diff 1.nir 2.red)"
    proc = run_snakemake(demo_run, cfg, "-n")
    text = proc.stdout + proc.stderr
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", text, re.M))
    assert stats == {"build_catalog": "1", "convert_expression_cog": "1", "all": "1",
                     "evaluate_expression": "1", "render_overview": "1", "total": "5"}, (
        text[-1500:])  # fmt: skip
    # restore the demo config so the other tests see an up-to-date run
    run_snakemake(demo_run, demo_config(), "-n")


def test_twelve_datasets_fan_out_as_parallel_branches(tmp_path):
    demo = demo_config()
    inputs = [demo["inputs"][i % 3] for i in range(12)]
    bands = ["nir", "nir", "s0_db_c_vv"]
    assets = ",".join(f"{i + 1}.{bands[i % 3]}" for i in range(12))
    cfg = {"inputs": inputs, "assets": assets, "reference": "1.nir", "item_id": "twelve"}
    proc = run_snakemake(tmp_path / "twelve", cfg, "--dag")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dot = proc.stdout
    labels = dict(re.findall(r'(\d+)\[label = "([a-z_]+)', dot))
    edges = re.findall(r"(\d+) -> (\d+)", dot)
    flows = [n for n, lab in labels.items() if lab == "estimate_flow"]
    assert len(flows) == 11  # one per secondary dataset
    colocs = {n for n, lab in labels.items() if lab == "colocate_asset"}
    assert len(colocs) == 12  # one per asset
    for f in flows:  # each flow waits only for its own inputs: independent branches
        parents = {a for a, b in edges if b == f}
        assert {labels[p] for p in parents} <= {"colocate_asset", "match_tiepoints"}
    # the 11 flows do not depend on each other
    assert not any(a in flows and b in flows for a, b in edges)
