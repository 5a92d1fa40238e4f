"""Rule colocate_asset: warp one asset onto the common grid with GDAL's warper."""

from costack.jobs import run_step
from costack.stages.colocate import run_colocate

run_step(
    snakemake,
    lambda: run_colocate(
        snakemake.input.manifest,
        snakemake.input.grid,
        snakemake.wildcards.key,
        snakemake.output[0],
        resampling=snakemake.params.resampling,
        pixel_center=snakemake.params.pixel_center,
        threads=snakemake.threads,
        policy=dict(snakemake.params.policy),
    ),
)
