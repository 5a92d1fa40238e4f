"""Rule discover_assets: resolve the listed assets into results/discover/manifest.csv."""

from costack.steps import run_discover
from costack.workflow import run_step

run_step(snakemake, lambda: run_discover(dict(snakemake.params.config), snakemake.output[0]))
