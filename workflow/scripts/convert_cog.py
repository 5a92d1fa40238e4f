"""Rule convert_cog: write one co-registered asset as a validated COG."""

from costack.jobs import run_step
from costack.stages.catalog import run_cog

run_step(
    snakemake, lambda: run_cog(snakemake.input[0], snakemake.output[0], threads=snakemake.threads)
)
