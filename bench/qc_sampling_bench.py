"""The QC on a sample of its lattice against the QC on the whole lattice, on a finished run.

For every secondary dataset of a workflow run (its ``results/`` and Snakemake log), runs the
QC stage (:func:`costack.stages.qc.run_qc`) on the rule's inputs (and co-location's resolution
ratio) twice or more: on every point of the 24 px lattice (``sample_points=0``, the QC before
issue 40) and on ``--points`` points drawn spread and weighted by the flow's confidence (the
rule's default), for ``--seeds`` seeds; prints each one's time and figures (mean, median, p90
of the residual before and after, points) and the sampled figures' relative difference to the
whole lattice's.

Run: ``python bench/qc_sampling_bench.py WORKDIR [--points 1024] [--seeds 3]``.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path


def qc_inputs(workdir: Path) -> dict[str, list[str]]:
    """Dataset -> [ref, colocated, coregistered, confidence] of its assess_registration job,
    from the run's Snakemake log."""
    log = max((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    out: dict[str, list[str]] = {}
    rule = None
    for line in log.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s.startswith("rule ") or s.startswith("localrule "):
            rule = s.split()[1].rstrip(":")
        elif rule == "assess_registration" and s.startswith("input:"):
            paths = [p.strip() for p in s.split(":", 1)[1].split(",")]
            n = re.search(r"flow/(\d+)\.confidence", paths[-1]).group(1)
            out[n] = [str(workdir / p) for p in paths]
    return out


def main() -> None:
    from costack.cli import _resolution_ratio
    from costack.stages.qc import QC_SAMPLE_POINTS, run_qc

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--points", type=int, default=QC_SAMPLE_POINTS)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    worst = 0.0
    for n, (ref, before, after, conf) in sorted(qc_inputs(args.workdir).items()):
        runs = []
        ratio = _resolution_ratio(None, before)  # as the rule: co-location's tag
        for label, kw in [("whole lattice", {"sample_points": 0})] + [
            (
                f"{args.points} pts seed {s}",
                {"sample_points": args.points, "seed": s, "confidence_tif": conf},
            )  # fmt: skip
            for s in range(args.seeds)
        ]:
            t0 = time.perf_counter()
            r = run_qc(ref, before, after, tmp / "qc.json", resolution_ratio=ratio, **kw)
            runs.append((label, time.perf_counter() - t0, r))
        print(f"dataset {n}: {Path(after).name}")
        base = runs[0][2]
        for label, secs, r in runs:
            cells = []
            for when in ("before", "after"):
                x = r[when]
                if x.get("figure") != "measured":
                    cells.append(f"{when} insufficient ({x['points']})")
                    continue
                p, b = x["pixels"], base[when].get("pixels")
                diff = ""
                if r is not base and b:
                    rel = [abs(p[k] - b[k]) / b[k] for k in ("mean", "median", "p90")]
                    worst = max(worst, *rel)
                    diff = " (" + "/".join(f"{100 * v:+.1f}".replace("+", "") for v in rel) + " %)"
                cells.append(f"{when} {p['mean']:.3f}/{p['median']:.3f}/{p['p90']:.3f} px on "
                             f"{x['points']}{diff}")  # fmt: skip
            print(f"  {label:<22} {secs:7.1f} s  " + "; ".join(cells))
    print(f"largest relative difference of a sampled figure (mean/median/p90) to the whole "
          f"lattice's: {100 * worst:.1f} %")  # fmt: skip


if __name__ == "__main__":
    main()
