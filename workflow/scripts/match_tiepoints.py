"""Rule match_tiepoints: sub-pixel tie points and the global model (Yan et al. 2016)."""

from costack.tiepoints import TiePointParams, run_tiepoints
from costack.workflow import run_step

run_step(
    snakemake,
    lambda: run_tiepoints(
        snakemake.input.ref,
        snakemake.input.sec,
        snakemake.output.csv,
        snakemake.output.model,
        snakemake.output.png,
        TiePointParams(multimodal=bool(snakemake.params.multimodal)),
        label=snakemake.params.label,
    ),
)
