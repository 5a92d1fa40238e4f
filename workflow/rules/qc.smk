# Independent check: residual misregistration after co-registration, re-matched on a grid.

from costack.stages.qc import qc_threads

# cores the QC keeps busy on this grid: one when it re-matches a sample (tile-sized grids)
QC_THREADS = qc_threads(GRID.height, GRID.width, config["qc_points"])


rule assess_registration:
    input:
        ref=f"results/colocated/{REF}.tif",
        colocated=lambda wc: f"results/colocated/{MATCH[int(wc.n)]}.tif",
        coregistered=lambda wc: f"results/coregistered/{MATCH[int(wc.n)]}.tif",
        confidence="results/flow/{n}.confidence.tif",
        ref_mask=lambda wc: mask_of(REF_DATASET),
        sec_mask=lambda wc: mask_of(wc.n),
    output:
        "results/qc/{n}.json",
    params:
        max_displacement=config["max_displacement"],
        qc_points=config["qc_points"],
        resolution_ratio=lambda wc: RES_RATIO[MATCH[int(wc.n)]],
    log:
        "logs/assess_registration/{n}.log",
    threads: QC_THREADS
    resources:
        mem_mb=2048,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/assess_registration.py"


rule summarize_qc:
    input:
        qc=expand("results/qc/{n}.json", n=SECONDARY),
        flows=expand("results/flow/{n}.json", n=SECONDARY),
        models=expand("results/tiepoints/{n}.model.json", n=SECONDARY),
        # the labels (item text) are read there, never passed as params (docs/security.md)
        manifest="results/discover/manifest.csv",
    output:
        "results/qc/summary.json",
    params:
        datasets=SECONDARY,
        matching={str(n): MATCH[n] for n in SECONDARY},
        thresholds=config["verdict"],
    log:
        "logs/summarize_qc/summary.log",
    threads: 1
    resources:
        mem_mb=256,
        runtime=5,
    conda:
        ENV
    script:
        "../scripts/summarize_qc.py"
