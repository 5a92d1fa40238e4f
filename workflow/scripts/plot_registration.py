"""Rule plot_registration: the report's figures and table for one secondary dataset."""

import shutil

from costack.jobs import run_step
from costack.stages.report import models_table, plot_composites, plot_flow, registration_label


def step() -> None:
    i, o = snakemake.input, snakemake.output
    label = registration_label(i.manifest, snakemake.wildcards.n, snakemake.params.key)
    plot_composites(i.ref, i.before, i.after, o.composite, label)
    plot_flow(i.flow, i.confidence, o.flowmap, label)
    shutil.copyfile(i.vectors, o.vectors)
    models_table(i.model, i.qc, o.models, i.summary, snakemake.wildcards.n, label)


run_step(snakemake, step)
