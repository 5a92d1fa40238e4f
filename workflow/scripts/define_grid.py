"""Rule define_grid: the common grid (reference CRS and pixels over the AOI or common area)."""

from costack.jobs import run_step
from costack.stages.grid import run_grid

run_step(
    snakemake,
    lambda: run_grid(
        snakemake.input[0],
        snakemake.params.reference,
        snakemake.params.aoi,
        snakemake.output[0],
        min_overlap_px=snakemake.params.min_overlap_px,
    ),
)
