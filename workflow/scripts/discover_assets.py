"""Rule discover_assets: resolve the listed assets into results/discover/manifest.csv."""

from costack.discover import run_discover
from costack.jobs import run_step

run_step(snakemake, lambda: run_discover(dict(snakemake.params.config), snakemake.output[0]))
