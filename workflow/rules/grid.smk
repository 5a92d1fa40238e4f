rule define_grid:
    input:
        "results/discover/manifest.csv",
    output:
        "results/grid/grid.json",
    params:
        reference=config["reference"],
        aoi=config["aoi"],
        min_overlap_px=config["min_overlap_px"],
    log:
        "logs/define_grid/grid.log",
    threads: 1
    resources:
        mem_mb=512,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/define_grid.py"
