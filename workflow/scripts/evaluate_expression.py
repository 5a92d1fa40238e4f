"""Rule evaluate_expression: one band-math s-expression into results/bandmath/{name}.tif."""

from costack.jobs import run_step
from costack.stages.bandmath import run_bandmath

rasters = {key: snakemake.input[f"asset_{i}"] for i, key in enumerate(snakemake.params.asset_keys)}
run_step(
    snakemake,
    lambda: run_bandmath(
        snakemake.params.expression,
        rasters,
        snakemake.output[0],
        grid_json=snakemake.input.grid,
        listed=set(snakemake.params.listed),
    ),
)
