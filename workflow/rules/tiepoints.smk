# Tie points (Yan et al. 2016) between the reference and each secondary dataset's matching
# asset: the evidence a user inspects and the global model that seeds the dense flow.

from costack.limits import TIEPOINT_IN_MEMORY_PIXELS

# a grid matched by tiles keeps both cores busy (two tiles of half the size at a time)
TIEPOINT_THREADS = 2 if GRID.width * GRID.height > TIEPOINT_IN_MEMORY_PIXELS else 1


rule match_tiepoints:
    input:
        ref=f"results/colocated/{REF}.tif",
        sec=lambda wc: f"results/colocated/{MATCH[int(wc.n)]}.tif",
        # the label (item text) is read there, never passed as a param (docs/security.md)
        manifest="results/discover/manifest.csv",
        ref_mask=lambda wc: mask_of(REF_DATASET),
        sec_mask=lambda wc: mask_of(wc.n),
    output:
        csv="results/tiepoints/{n}.csv",
        model="results/tiepoints/{n}.model.json",
        png="results/tiepoints/{n}.png",
    params:
        key=lambda wc: MATCH[int(wc.n)],
        resolution_ratio=lambda wc: RES_RATIO[MATCH[int(wc.n)]],
        max_shift=config["max_displacement"],
    log:
        "logs/match_tiepoints/{n}.log",
    # two cores for a grid matched by tiles even beside other datasets' flows (one core each):
    # a tile dataset's tie points 12-15 s so (RESULTS-stack.txt 0p), 19-32 s on one core (0o)
    threads: TIEPOINT_THREADS
    # the registration chain (tie points, then flow) is the run's longest path: scheduled before
    # the COGs and QC of the datasets already registered, and the tie points before the flows,
    # so that the two-core jobs run early, the one-core flows pair up, and a flow left alone
    # finds the other datasets' co-registrations, QC and COGs to share the machine with (six
    # tile datasets 518-537 -> 469 s, 920 of 930 core-seconds busy, RESULTS-stack.txt 0q;
    # priority changes no output)
    priority: 20
    resources:
        mem_mb=2048,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/match_tiepoints.py"
