"""``costack run``: write the config from the service's parameters and run the workflow through
Snakemake's Python API (no shell command built from strings)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from costack.errors import CostackError

REPO = Path(__file__).resolve().parents[2]


def _quiet() -> frozenset:
    """What ``costack run`` leaves out of Snakemake's log unless ``-v``: the rules' blocks, the
    host and the reasons; the progress ("N of M steps done") and the errors are kept."""
    from snakemake.settings.enums import Quietness

    return frozenset({Quietness.RULES, Quietness.HOST, Quietness.REASON})


def snakefile() -> Path:
    """The workflow's Snakefile (costack run needs the repository checkout)."""
    path = REPO / "Snakefile"
    if not path.exists():
        raise CostackError(
            "costack run", "the workflow files (Snakefile) are not next to this installation",
            "install costack from its repository checkout (pip install -e .)",
        )  # fmt: skip
    return path


def load_profile(profile: str | None) -> dict[str, Any]:
    """A Snakemake profile's settings (a folder with config.yaml, or a name under profiles/)."""
    if not profile:
        return {}
    folder = Path(profile)
    if not folder.exists():
        folder = REPO / "profiles" / profile
    cfg = folder / "config.yaml"
    if not cfg.exists():
        raise CostackError(
            "--profile", f"no profile {profile!r} (looked for {cfg})",
            "give a folder holding config.yaml, or one of profiles/default, profiles/slurm",
        )  # fmt: skip
    return yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}


def _stale_lock(out: Path) -> bool:
    """Whether ``out`` holds Snakemake's lock of a run that no longer lives (killed); a lock of a
    run that is still working is an error."""
    from costack.jobs import live_run

    locks = out / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.iterdir()):
        return False
    pid = live_run(out / ".snakemake" / "costack" / "run.pid")
    if pid:
        raise CostackError(
            "--out", f"another run (pid {pid}) is working in {out}",
            "wait for it to end, or give another --out folder",
        )  # fmt: skip
    return True


def run_workflow(
    raw_config: dict[str, Any],
    out: str | Path,
    cores: int = 2,
    profile: str | None = None,
    dryrun: bool = False,
    quiet: bool = True,
) -> Path:
    """Validate the parameters, write ``OUT/config.yaml`` and run the workflow in ``OUT``.

    Returns the path of the STAC catalog.
    """
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        ExecutionSettings,
        OutputSettings,
        ResourceSettings,
    )

    from costack.plan import preflight, refuse_foreign_results
    from costack.stages.discover import normalise_item_ref

    out = Path(out).resolve()
    # every bad input stops here, before anything is written; and so does an --out folder
    # holding another run's results
    refuse_foreign_results(preflight(dict(raw_config)), out)
    raw = dict(raw_config)
    raw["inputs"] = [normalise_item_ref(i) for i in raw.get("inputs") or []]
    prof = load_profile(profile)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    default_resources = prof.get("default-resources")
    if isinstance(default_resources, list):
        default_resources = dict(item.split("=", 1) for item in default_resources)
    # Snakemake logs through its own handler; its records must not also reach the root
    # logger's handler that `costack -v` sets up (every line twice, and "Shell command: None"
    # lines its own filter drops)
    logging.getLogger("snakemake").propagate = False
    output = OutputSettings(quiet=_quiet() if quiet else None, dryrun=dryrun)
    with SnakemakeApi(output) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(
                cores=int(prof.get("cores", cores)),
                nodes=prof.get("jobs"),
                default_resources=default_resources,
            ),
            config_settings=ConfigSettings(configfiles=[cfg_path]),
            snakefile=snakefile(),
            workdir=out,
        )
        stale = _stale_lock(out)
        if stale:
            workflow.dag(DAGSettings()).unlock()
            print(f"costack run: the last run in {out} was killed; unlocked, resuming it "
                  "(its incomplete outputs are made again)")  # fmt: skip
        dag = workflow.dag(DAGSettings(force_incomplete=True))
        dag.execute_workflow(
            executor="dryrun" if dryrun else prof.get("executor", "local"),
            execution_settings=ExecutionSettings(retries=int(prof.get("retries", 0))),
        )
    return out / "results" / "catalog.json"
