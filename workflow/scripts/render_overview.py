"""Rule render_overview: the run's overview page, results/report.html."""

from pathlib import Path

from costack.jobs import run_step
from costack.stages.report import run_overview

run_step(
    snakemake,
    lambda: run_overview(
        Path(snakemake.output[0]).parent,
        snakemake.output[0],
        snakemake.params.reference,
        snakemake.params.item_id,
        expressions=list(snakemake.params.expressions),
        on_failed_registration=snakemake.params.on_failed_registration,
    ),
)
