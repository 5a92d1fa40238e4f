rule colocate_asset:
    input:
        manifest="results/discover/manifest.csv",
        grid="results/grid/grid.json",
        source=lambda wc: SOURCE.get(wc.key, []),
    output:
        "results/colocated/{key}.tif",
    params:
        resampling=config["resampling"],
        pixel_center=config["gcp_pixel_center"],
        # the sources' gate, as in discovery (docs/security.md)
        policy=POLICY,
    log:
        "logs/colocate_asset/{key}.log",
    # one core: mostly single-threaded work (10980 x 10980 tile on two threads, CPU over
    # wall: co-location 0.99, co-registration 1.33, COG 1.3, flow COG 1.2); two such
    # jobs side by side use the machine better than one holding both cores
    threads: 1
    # as high as the registration chain it feeds (tie points, flow): without it, a dataset's
    # matching asset waited behind the COGs and QC of the datasets before it (4096 px stack
    # bench: dataset 3's tie points started at 206 s, when dataset 2's chain was done)
    priority: 10
    resources:
        mem_mb=2048,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/colocate_asset.py"


rule colocate_mask:
    input:
        grid="results/grid/grid.json",
    output:
        "results/masks/{n}.tif",
    params:
        item_mask=lambda wc: ITEM_MASKS.get(int(wc.n)),
        user_mask=lambda wc: USER_MASKS.get(int(wc.n)),
        scl_classes=config["mask_scl_classes"],
        qa_bits=config["mask_qa_pixel_bits"],
        policy=POLICY,
    log:
        "logs/colocate_mask/{n}.log",
    threads: 1
    resources:
        mem_mb=2048,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/colocate_mask.py"
