"""Rules convert_cog and convert_expression_cog: one raster of the stack as a validated COG in
results/cog/, which the catalog step publishes once the registration verdicts allow it."""

from costack.jobs import run_step
from costack.stages.catalog import run_cog

run_step(
    snakemake,
    lambda: run_cog(
        snakemake.input[0],
        snakemake.output[0],
        threads=snakemake.threads,
        compression=snakemake.params.compression,
    ),
)
