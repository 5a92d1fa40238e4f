# Validation before any job runs: config (schema and service syntax), STAC items, raster
# headers, the common grid, and a results folder of this run's own (no other run's files in
# results/stack). A problem stops the run with one line and leaves no output. The result is
# cached in .snakemake/costack/ (see costack.plan.cached_preflight): later calls (-n, --unlock,
# every job) reuse it while no local item or raster has changed.
import sys
from pathlib import Path

from snakemake.utils import validate

from costack.config import read_config_file, schema_path
from costack.errors import CostackError
from costack.io.remote import configure_gdal
from costack.io.masks import check_user_mask
from costack.jobs import forget_run, live_run, record_run
from costack.plan import (
    cached_preflight,
    parse_expressions,
    refuse_foreign_results,
    unused_inputs_warning,
)

RUN_PID = ".snakemake/costack/run.pid"


if "--unlock" in sys.argv and live_run(RUN_PID):
    sys.exit(
        f"costack: error: --unlock: a run (pid {live_run(RUN_PID)}) is still working in this "
        "folder and holds the lock; wait for it to end or stop it (kill it), then unlock"
    )

if isinstance(config.get("masks"), dict):  # YAML's integer keys, as JSON Schema's strings
    config["masks"] = {str(k): v for k, v in config["masks"].items()}
try:
    # the config files again, strictly: Snakemake's own YAML loader keeps the last of a key
    # given twice without a word (docs/security.md)
    for configfile_path in workflow.overwrite_configfiles:
        read_config_file(configfile_path)
    PLAN = cached_preflight(config)
    # a folder holding another run's item or files this run does not make is refused
    refuse_foreign_results(PLAN)
except CostackError as err:
    sys.exit(f"costack: error: {err}")
UNUSED = unused_inputs_warning(PLAN.cfg)
if UNUSED:
    print(UNUSED, file=sys.stderr)

if isinstance(config.get("matching_assets"), dict):
    config["matching_assets"] = {str(k): v for k, v in config["matching_assets"].items()}
validate(config, schema=str(schema_path()), set_default=True)

CFG, MANIFEST, GRID = PLAN.cfg, PLAN.manifest, PLAN.grid
# what an item may make this machine read, and the time limits of remote reads: the jobs
# check their sources with it again (docs/security.md); GDAL's own HTTP settings go to the
# jobs through the environment
POLICY = dict(
    allowed_sources=list(CFG.allowed_sources),
    allowed_paths=list(CFG.allowed_paths),
    timeout=CFG.http_timeout,
    retries=CFG.http_retries,
)
configure_gdal(CFG.http_timeout, CFG.http_retries)
KEYS = CFG.keys
EXPRESSIONS = parse_expressions(CFG)
EXPRESSION_NAMES = list(EXPRESSIONS)
ENV = "../../envs/costack.yaml"

REF = PLAN.reference
SECONDARY = PLAN.secondary
# The flow keeps two cores 1.6 times as busy as one: with at least as many secondary datasets
# as cores, one core each lets two datasets' flows run side by side (two 10980 x 10980 flows:
# 56 s so, 72 s one after the other on two cores). The outputs do not depend on it.
FLOW_THREADS = 1 if len(SECONDARY) >= (workflow.cores or 2) else 2
MATCH = PLAN.matching
DB = PLAN.db
RES_RATIO = PLAN.resolution_ratio
# a dataset's label in the report and the verdict lines: platform and acquisition date
LABEL = PLAN.label

# masks (issue 35): each dataset's item quality layer (when item_masks) and the user's mask,
# co-located once per dataset to results/masks/N.tif for the tie points, flow and QC
ITEM_MASKS = PLAN.item_masks if config["item_masks"] else {}
USER_MASKS = {int(k): v for k, v in config["masks"].items()}
try:
    for _n, _mask in USER_MASKS.items():
        check_user_mask(_mask, f"masks[{_n}]")
except CostackError as err:
    sys.exit(f"costack: error: {err}")
MASKED = sorted(n for n in set(ITEM_MASKS) | set(USER_MASKS) if n in CFG.datasets)
REF_DATASET = int(REF.split(".", 1)[0])


def mask_of(n):
    """Dataset n's co-located mask, or no input when it has none."""
    return f"results/masks/{n}.tif" if int(n) in MASKED else []


# Local source rasters are inputs of their colocation job, so that a changed file is
# co-located again (remote hrefs are read once; rerun with -R colocate_asset to refresh them).
SOURCE = {
    k: g for k, g in zip(MANIFEST["key"], MANIFEST["gdal_path"]) if Path(str(g)).is_file()
}


def dataset_of(key):
    return int(key.split(".", 1)[0])


def coregister_inputs(wildcards):
    n = dataset_of(wildcards.key)
    inputs = {"colocated": f"results/colocated/{wildcards.key}.tif"}
    if n in SECONDARY:
        inputs["flow"] = f"results/flow/{n}.tif"
    return inputs


wildcard_constraints:
    key=r"[0-9]+\.[A-Za-z0-9_\-]+",
    name=r"[A-Za-z_][A-Za-z0-9_]*",
    n=r"[0-9]+",
