# Figures for `snakemake --report report.html`: composites, tie-point vectors, flow maps, models.


rule plot_registration:
    input:
        ref=f"results/colocated/{REF}.tif",
        before=lambda wc: f"results/colocated/{MATCH[int(wc.n)]}.tif",
        after=lambda wc: f"results/coregistered/{MATCH[int(wc.n)]}.tif",
        flow="results/flow/{n}.tif",
        confidence="results/flow/{n}.confidence.tif",
        model="results/tiepoints/{n}.model.json",
        qc="results/qc/{n}.json",
        vectors="results/tiepoints/{n}.png",
        summary="results/qc/summary.json",
        # the label (item text) is read there, never passed as a param: Snakemake writes a
        # report figure's params into the report's script block unescaped (docs/security.md)
        manifest="results/discover/manifest.csv",
    output:
        composite=report(
            "results/qc/{n}.composite.png",
            caption="../report/composite.rst",
            category="Registration",
            subcategory="dataset {n}",
            labels={"dataset": "{n}", "figure": "red/cyan composites"},
        ),
        flowmap=report(
            "results/qc/{n}.flow.png",
            caption="../report/flow.rst",
            category="Registration",
            subcategory="dataset {n}",
            labels={"dataset": "{n}", "figure": "displacement and confidence"},
        ),
        vectors=report(
            "results/qc/{n}.vectors.png",
            caption="../report/vectors.rst",
            category="Registration",
            subcategory="dataset {n}",
            labels={"dataset": "{n}", "figure": "tie-point vectors"},
        ),
        models=report(
            "results/qc/{n}.models.html",
            caption="../report/models.rst",
            category="Registration",
            subcategory="dataset {n}",
            labels={"dataset": "{n}", "figure": "verdict, models and residual"},
        ),
    params:
        key=lambda wc: MATCH[int(wc.n)],
    log:
        "logs/plot_registration/{n}.log",
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/plot_registration.py"
