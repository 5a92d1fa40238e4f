"""Rule summarize_qc: results/qc/summary.json from the per-dataset checks, with each secondary
dataset's verdict (pass, warn, fail) and its reasons (see costack.stages.qc.judge)."""

from costack.jobs import run_step
from costack.stages.qc import VerdictThresholds, dataset_labels, merge_summaries

keys = list(map(str, snakemake.params.datasets))
run_step(
    snakemake,
    lambda: merge_summaries(
        dict(zip(keys, snakemake.input.qc, strict=True)),
        snakemake.output[0],
        flows=dict(zip(keys, snakemake.input.flows, strict=True)),
        models=dict(zip(keys, snakemake.input.models, strict=True)),
        labels=dataset_labels(snakemake.input.manifest, dict(snakemake.params.matching)),
        thresholds=VerdictThresholds(**snakemake.params.thresholds),
    ),
)
