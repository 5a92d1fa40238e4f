"""Rule convert_cog: write one co-registered asset as a validated COG."""

from costack.catalog import run_cog
from costack.jobs import run_step

run_step(snakemake, lambda: run_cog(snakemake.input[0], snakemake.output[0]))
