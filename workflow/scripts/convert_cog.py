"""Rules convert_cog and convert_expression_cog: one raster of the stack as a validated COG,
once the registration verdicts allow the stack to be published."""

from costack.jobs import run_step
from costack.stages.catalog import run_cog

run_step(
    snakemake,
    lambda: run_cog(
        snakemake.input.src,
        snakemake.output[0],
        qc_json=snakemake.input.qc,
        on_failed_registration=snakemake.params.on_failed_registration,
        threads=snakemake.threads,
    ),
)
