"""Rule summarize_qc: results/qc/summary.json from the per-dataset checks."""

from costack.qc import merge_summaries
from costack.workflow import run_step

run_step(
    snakemake,
    lambda: merge_summaries(
        dict(zip(map(str, snakemake.params.datasets), snakemake.input, strict=True)),
        snakemake.output[0],
    ),
)
