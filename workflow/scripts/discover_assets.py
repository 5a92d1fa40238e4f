"""Rule discover_assets: resolve the listed assets into results/discover/manifest.csv."""

from costack.config import parse_config
from costack.jobs import run_step
from costack.stages.discover import run_discover

run_step(
    snakemake,
    lambda: run_discover(parse_config(dict(snakemake.params.config)), snakemake.output[0]),
)
