# costack: co-registered stacking of optical and SAR images.
# Thin entry point; the rules live in workflow/rules/, one file per stage.
import os
import sys

from snakemake.utils import min_version

min_version("8.10")


# The demo's configuration applies only when no --configfile is given: a user's config file
# describes the user's run alone (no demo expression or item id leaks into it). Run from
# another folder (-s) without one, there is no demo to run: say what to give.
if not workflow.overwrite_configfiles:
    if not os.path.isfile("config/config.yaml"):
        sys.exit(
            f"costack: error: --configfile: {os.getcwd()} has no config/config.yaml (the demo's, "
            f"in the checkout); give your run's: snakemake -s {workflow.snakefile} --configfile "
            "my.yaml --cores 2 (or costack run --out DIR with the service's parameters)"
        )

    configfile: "config/config.yaml"



report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/discover.smk"
include: "workflow/rules/grid.smk"
include: "workflow/rules/colocate.smk"
include: "workflow/rules/tiepoints.smk"
include: "workflow/rules/flow.smk"
include: "workflow/rules/coregister.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/bandmath.smk"
include: "workflow/rules/catalog.smk"


rule all:
    input:
        "results/report.html",
        "results/catalog.json",
        expand("results/qc/{n}.composite.png", n=SECONDARY),
    default_target: True


# A running workflow records its pid, so that `snakemake --unlock` refuses to remove a live
# run's lock (see common.smk); a fresh install compiles its numba kernels here, once, on two
# cores, instead of inside the jobs (src/costack/precompile.py); the registration verdicts are
# the run's last lines.
onstart:
    from costack.precompile import ensure_compiled

    record_run(RUN_PID)
    ensure_compiled(processes=2)


onsuccess:
    from costack.stages.qc import verdict_lines

    forget_run(RUN_PID)
    for line in verdict_lines("results/qc/summary.json"):
        print(line, file=sys.stderr)


onerror:
    from costack.stages.qc import verdict_lines

    forget_run(RUN_PID)
    for line in verdict_lines("results/qc/summary.json"):
        print(line, file=sys.stderr)
