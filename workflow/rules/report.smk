# The overview page results/report.html (the first entry of `snakemake --report`), and the
# figures for `snakemake --report report.html`: composites, tie-point vectors, flow maps, models.


rule render_overview:
    input:
        summary="results/qc/summary.json",
        manifest="results/discover/manifest.csv",
        ref=f"results/colocated/{REF}.tif",
        before=[f"results/colocated/{MATCH[n]}.tif" for n in SECONDARY],
        after=[f"results/coregistered/{MATCH[n]}.tif" for n in SECONDARY],
        flows=expand("results/flow/{n}.tif", n=SECONDARY),
        confidences=expand("results/flow/{n}.confidence.tif", n=SECONDARY),
        flow_stats=expand("results/flow/{n}.json", n=SECONDARY),
        models=expand("results/tiepoints/{n}.model.json", n=SECONDARY),
        # the stack's pixels before their COGs, which a failed verdict refuses: the page is
        # there to show why (and first among the jobs the QC summary releases)
        coregistered=expand("results/coregistered/{key}.tif", key=KEYS),
        bandmath=expand("results/bandmath/{name}.tif", name=EXPRESSION_NAMES),
    output:
        report(
            "results/report.html",
            caption="../report/overview.rst",
            category="Overview",
            subcategory="open first",
            labels={"page": "overview of the run"},
        ),
    params:
        reference=config["reference"],
        item_id=config["item_id"],
        expressions=EXPRESSION_NAMES,
        on_failed_registration=config["on_failed_registration"],
    log:
        "logs/render_overview/overview.log",
    priority: 20
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/render_overview.py"


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
