# Dense flow: one job per secondary dataset, between the reference and its matching asset.


rule estimate_flow:
    input:
        ref=f"results/colocated/{REF}.tif",
        sec=lambda wc: f"results/colocated/{MATCH[int(wc.n)]}.tif",
        model="results/tiepoints/{n}.model.json",
        ref_mask=lambda wc: mask_of(REF_DATASET),
        sec_mask=lambda wc: mask_of(wc.n),
        # the SAR dataset's other polarisations (VH beside VV): the structure mode averages
        # their edge strengths with the matching asset's
        aux=lambda wc: [f"results/colocated/{k}.tif" for k in PLAN.polarisations(int(wc.n))],
    output:
        flow="results/flow/{n}.tif",
        confidence="results/flow/{n}.confidence.tif",
        stats="results/flow/{n}.json",
        support="results/flow/{n}.support.tif",
    params:
        mode=config["flow_mode"],
        radii=config["flow_radii"],
        max_displacement=config["max_displacement"],
        hold_changes=config["flow_hold_changes"],
        matching=lambda wc: MATCH[int(wc.n)],
        resolution_ratio=lambda wc: RES_RATIO[MATCH[int(wc.n)]],
    log:
        "logs/estimate_flow/{n}.log",
    threads: FLOW_THREADS
    # the registration chain (tie points, then flow) is the run's longest path: scheduled before
    # the COGs and QC of the datasets already registered (priority changes no output)
    priority: 10
    resources:
        mem_mb=4096,
        runtime=60,
    conda:
        ENV
    script:
        "../scripts/estimate_flow.py"
