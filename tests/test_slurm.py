"""The demo's registrations through a real SLURM cluster (one node on this machine,
cluster/local-slurm.sh) as group jobs: their COGs byte-identical to the local run, the jobs in
the scheduler's accounting, and an injected job failure retried to success.

Runs when the user is root and Debian's slurm packages are installed (`.ci/run` installs
them with cluster/install-system-packages.sh); skipped otherwise, with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]
SCRIPT = REPO / "cluster" / "local-slurm.sh"
DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sacctmgr", "sbatch")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (its daemons run as root)"
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return f"Debian's slurm packages are not installed ({', '.join(missing)} missing)"
    for daemon in ("munged", "slurmdbd", "slurmctld", "slurmd"):
        found = subprocess.run(["pgrep", "-x", daemon], capture_output=True, text=True)
        if found.returncode == 0:  # its ports and accounts would answer for our cluster
            return f"a {daemon} already runs on this host (pid {found.stdout.split()[0]})"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm") / "cluster"
    env = dict(os.environ, COSTACK_SLURM_DIR=str(folder))
    try:
        start = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True,
                               env=env, timeout=600)  # fmt: skip
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        yield dict(env, SLURM_CONF=str(folder / "etc" / "slurm.conf"))
    finally:  # also after a failed start: no daemon of ours outlives the test
        stop = subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True,
                              env=env)  # fmt: skip
    assert stop.returncode == 0, stop.stderr
    assert not folder.exists()


def test_demo_through_slurm_is_the_local_demo(cluster, request, tmp_path):
    """The demo's three registrations (one asset of each optical dataset and both
    polarisations of the SAR one, which its flow uses; the same grid as the whole demo, no
    expressions) as SLURM group jobs: their stack and flow COGs are the local demo's, byte for
    byte."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(REPO / "Snakefile", root)
    for folder in ("workflow", "config", "resources", "profiles", "envs"):
        shutil.copytree(REPO / folder, root / folder)
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    config.update(assets="1.nir,2.nir,3.s0_db_c_vv,3.s0_db_c_vh", expressions=[])
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(cluster, PYTHONWARNINGS="ignore", COSTACK_FAIL_ONCE="match_tiepoints")
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm",
           "--default-resources", "slurm_account=costack", "slurm_partition=debug",
           "--slurm-init-seconds-before-status-checks", "2",
           "--seconds-between-status-checks", "2"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=1800)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"SLURM demo: {seconds:.0f} s")
    # the local demo only now (another xdist worker makes it meanwhile): the SLURM run
    # started at once instead of waiting for it
    demo_run = request.getfixturevalue("demo_run")
    mine = sorted((root / "results" / "stack").glob("*.tif"))
    # 1.nir, 2.nir, 3.s0_db_c_vv, 3.s0_db_c_vh and the two flows (displacement, confidence,
    # support each)
    assert len(mine) == 10, [p.name for p in mine]
    for path in mine:
        assert path.read_bytes() == (demo_run / "results" / "stack" / path.name).read_bytes()
    # the scheduler's own records: one job per group (prepare, two registrations, four
    # assets' co-registration, catalog), the injected failure and its retry
    acct = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,JobName,State,ExitCode"],
                          capture_output=True, text=True, env=env, check=True).stdout  # fmt: skip
    states = [line.split("|")[2] for line in acct.splitlines() if line]
    assert states.count("COMPLETED") == 8, acct
    assert states.count("FAILED") == 1, acct
    log = root / "logs" / "match_tiepoints"
    assert log.is_dir()
    marker = root / ".snakemake" / "costack" / "failed-once-match_tiepoints"
    assert marker.exists()
