"""The ``costack`` command line: one subcommand per workflow step.

Every step reads and writes the same files as the Snakemake rule of that step, so a user can
rerun or inspect one step by hand on the intermediate files of the last run. Bad input ends
with ``costack: error: <parameter>: <problem>; <fix>`` and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from costack import __version__
from costack.errors import CostackError, describe, file_errors


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configfile", help="YAML config file (as for snakemake)")
    p.add_argument(
        "--input", dest="inputs", action="append", metavar="ITEM",
        help="input product reference: path or URL of a calibrated dataset's STAC item; "
        "repeat in order (dataset N is the N-th)",
    )  # fmt: skip
    p.add_argument(
        "--assets",
        help="list of single-band assets as comma-separated DATASET.BAND without spaces, "
        "e.g. 1.nir,2.nir,3.s0_db_c_vv",
    )
    p.add_argument("--reference", help="reference asset in the list of assets, e.g. 1.nir")
    p.add_argument("--aoi", help="area of interest in WKT (EPSG:4326); overrides the common area")
    p.add_argument(
        "--expression", dest="expressions", action="append", metavar="NAME:(EXPR)",
        help="s-expression defined as 'new_asset_name:(expression)'; repeatable",
    )  # fmt: skip


def _config_from_args(args: argparse.Namespace) -> dict:
    from costack.config import read_config_file

    raw: dict = read_config_file(args.configfile) if args.configfile else {}
    for name in ("inputs", "assets", "reference", "aoi", "expressions"):
        value = getattr(args, name, None)
        if value is not None:
            raw[name] = value
    return raw


def cmd_run(args: argparse.Namespace) -> None:
    """Run the whole workflow with the service's parameters."""
    from costack.runner import run_workflow

    raw = _config_from_args(args)
    if args.item_id:
        raw["item_id"] = args.item_id
    catalog = run_workflow(
        raw, args.out, cores=args.cores, profile=args.profile,
        dryrun=args.dry_run, quiet=not args.verbose,
    )  # fmt: skip
    if not args.dry_run:
        print(f"overview page (open it first): {catalog.parent / 'report.html'}")
        print(f"STAC catalog: {catalog}")
        print(f"stack item and COGs: {catalog.parent / 'stack'}")
        print(f"tie points and vectors: {catalog.parent / 'tiepoints'}")


def cmd_check(args: argparse.Namespace) -> None:
    """Validate a configuration without running anything."""
    from costack.plan import preflight, unused_inputs_warning

    plan = preflight(_config_from_args(args))
    unused = unused_inputs_warning(plan.cfg)
    if unused:
        print(unused, file=sys.stderr)
    print(plan.summary())


def cmd_verify(args: argparse.Namespace) -> None:
    """Check the published files of an item, or of every item a catalog links, against their
    file:size and file:checksum; refuse what holds nothing to check."""
    from costack.io.stac import verify_stac

    if not Path(args.item).is_file():
        raise CostackError("item", f"{args.item} does not exist",
                           "give the stack's item JSON or the run's catalog.json")  # fmt: skip
    try:
        problems, checked = verify_stac(args.item)
    except ValueError as err:
        raise CostackError(
            "item",
            f"{args.item} cannot be verified: {err}",
            "give the stack's item JSON or the run's catalog.json",
        ) from err
    for line in problems:
        print(f"costack: verify: {line}", file=sys.stderr)
    if problems:
        raise CostackError(
            "item", f"{len(problems)} published file(s) differ from {args.item} or are missing",
            "rerun the workflow to rebuild them (snakemake --forcerun convert_cog ... for a COG, "
            "then build_catalog, which publishes the COGs and the item)",
        )  # fmt: skip
    if checked == 0:
        raise CostackError(
            "item", f"{args.item} lists no local file with a file:size or file:checksum: "
            "nothing to verify", "give an item costack published (results/stack/ITEM_ID.json)",
        )  # fmt: skip
    print(f"ok: {checked} file(s) of {args.item} match their checksums")


def cmd_validate(args: argparse.Namespace) -> None:
    """Validate an item or a catalog (and what it links) offline, against the vendored
    schemas of STAC 1.1.0 and of every extension the documents declare."""
    from costack.io.validation import validate_stac

    if not Path(args.document).is_file():
        raise CostackError("document", f"{args.document} does not exist",
                           "give the stack's item JSON or the run's catalog.json")  # fmt: skip
    errors, count = validate_stac(args.document)
    for line in errors:
        print(f"costack: validate: {line}", file=sys.stderr)
    if errors:
        raise CostackError(
            "document", f"{len(errors)} problem(s) validating {args.document} or what it links",
            "fix the document; an unvendored version or extension cannot be checked offline "
            "(stac-validator, online, can)",
        )  # fmt: skip
    print(f"ok: {count} STAC document(s) of {args.document} valid against the STAC "
          "1.1.0 and extension schemas (offline)")  # fmt: skip


def cmd_report(args: argparse.Namespace) -> None:
    """The overview page of a run (the rule render_overview's)."""
    from costack.config import parse_config
    from costack.stages.report import run_overview

    cfg = parse_config(_config_from_args(args))
    results = Path(args.results)
    if not (results / "qc" / "summary.json").is_file():
        raise CostackError(
            "--results", f"{results} holds no finished run (no qc/summary.json)",
            "give the results folder of a run (OUT/results for costack run --out OUT)",
        )  # fmt: skip
    out = Path(args.out) if args.out else results / "report.html"
    run_overview(results, out, cfg.reference.key, cfg.item_id,
                 expressions=[e.name for e in cfg.expressions],
                 on_failed_registration=cfg.on_failed_registration)  # fmt: skip
    print(f"overview page: {out}")


def cmd_discover(args: argparse.Namespace) -> None:
    """Step discover."""
    from costack.config import parse_config
    from costack.stages.discover import run_discover

    run_discover(parse_config(_config_from_args(args)), args.out)


def cmd_grid(args: argparse.Namespace) -> None:
    """Step grid."""
    from costack.stages.grid import run_grid

    run_grid(args.manifest, args.reference, args.aoi, args.out)


def cmd_colocate(args: argparse.Namespace) -> None:
    """Step colocate."""
    from costack.io.remote import SourcePolicy
    from costack.stages.colocate import run_colocate

    policy = SourcePolicy(tuple(args.allowed_source), tuple(args.allowed_path),
                          args.http_timeout, args.http_retries)  # fmt: skip
    run_colocate(
        args.manifest, args.grid, args.key, args.out, args.resampling,
        not args.gcp_corner, args.threads, policy,
    )  # fmt: skip


def cmd_coregister(args: argparse.Namespace) -> None:
    """Step coregister for the reference dataset's assets, which are not moved (a copy)."""
    from costack.stages.coregister import run_coregister_identity

    run_coregister_identity(args.colocated, args.out)


def _key_paths(specs: list[str], option: str = "--asset") -> dict[str, str]:
    """``--asset KEY=PATH`` (or ``--expression NAME=PATH``) options as a mapping."""
    out = {}
    for spec in specs:
        key, sep, path = spec.partition("=")
        if not sep:
            raise CostackError(option, f"{spec!r} is not KEY=PATH", "write e.g. 1.nir=a.tif")
        out[key] = path
    return out


def _expression_paths(specs: list[str]) -> dict[str, str]:
    """``costack catalog --expression`` options as the rule build_catalog passes them: the
    expression's source ``NAME:(EXPR)`` to its COG. ``NAME:(EXPR)=COG`` (split at the last
    ``=``) or ``NAME=COG``, whose expression is read from the COG's ``costack_expression`` tag
    (written by band math); a COG computed from another expression is refused."""
    from costack.io.rasters import costack_tags
    from costack.stages.bandmath import split_expression

    out = {}
    for spec in specs:
        given, sep, path = spec.rpartition("=")
        if not sep or not given or not path:
            raise CostackError(
                "--expression",
                f"{spec!r} is not NAME:(EXPR)=COG or NAME=COG",
                "write e.g. 'ndvi:(norm_diff 1.nir 1.red)=results/stack/ndvi.tif'",
            )
        if not Path(path).is_file():
            raise CostackError(
                "--expression",
                f"{path} does not exist",
                "give the band-math output's COG (results/stack/NAME.tif)",
            )
        tagged = costack_tags(path).get("costack_expression")
        if ":" in given:
            expr = split_expression(given)
            source = f"{expr.name}:{expr.text}"  # as the rule passes it (ParsedExpression)
        elif tagged:
            source = tagged
        else:
            raise CostackError("--expression", f"{path} records no expression (no "
                               "costack_expression tag), and {given!r} gives none",
                               f"write it whole: '{given}:(EXPR)={path}'")  # fmt: skip
        if tagged and tagged != source:
            raise CostackError("--expression", f"{path} was computed as {tagged!r}, given as "
                               f"{source!r}", "give each expression its own COG")  # fmt: skip
        out[source] = path
    return out


def cmd_bandmath(args: argparse.Namespace) -> None:
    """Band math on rasters given by hand."""
    from costack.stages.bandmath import run_bandmath

    run_bandmath(args.expression, _key_paths(args.asset), args.out, grid_json=args.grid)


def _add_mask_options(p: argparse.ArgumentParser) -> None:
    """The exclusion options of the tiepoints, flow and qc subcommands (issue 35)."""
    p.add_argument(
        "--mask-reference", metavar="RASTER",
        help="the reference's quality mask on the grid (Sentinel-2 L2A SCL, Landsat C2 "
        "QA_PIXEL or a 0/1 raster, see --mask-kind): its excluded pixels take no part",
    )  # fmt: skip
    p.add_argument("--mask-secondary", metavar="RASTER",
                   help="the secondary's quality mask on the grid, likewise")  # fmt: skip
    p.add_argument(
        "--mask-kind", default="auto", choices=["auto", "scl", "qa_pixel", "binary"],
        help="how the mask rasters are read: scl (classes 0 1 3 8 9 10 11 excluded), qa_pixel "
        "(bits 0-5 excluded), binary (non-zero excluded); auto: the raster's costack_mask_kind "
        "tag (the workflow writes it), else binary",
    )  # fmt: skip
    p.add_argument("--mask-scl-classes", metavar="LIST", default="0,1,3,8,9,10,11",
                   help="SCL classes excluded (the workflow's mask_scl_classes)")  # fmt: skip
    p.add_argument("--mask-qa-pixel-bits", metavar="LIST", default="0,1,2,3,4,5",
                   help="QA_PIXEL bits excluded (the workflow's mask_qa_pixel_bits)")  # fmt: skip
    p.add_argument(
        "--exclude", metavar="WKT|GEOJSON",
        help="polygons (EPSG:4326, lon/lat) excluded in both images: WKT, GeoJSON or a "
        ".geojson file (a known damage zone, a flood extent)",
    )  # fmt: skip


def _exclusions(args: argparse.Namespace):
    """The :class:`costack.io.masks.Exclusions` of the mask options, or None."""
    from costack.io.masks import Exclusions, parse_polygons

    if not (args.mask_reference or args.mask_secondary or args.exclude):
        return None
    for opt, path in (("--mask-reference", args.mask_reference),
                      ("--mask-secondary", args.mask_secondary)):  # fmt: skip
        if path and not Path(path).exists():
            raise CostackError(opt, f"{path} does not exist", "give a mask raster on the grid")

    def ints(text: str, opt: str) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise CostackError(opt, f"{text!r} is not a comma-separated list of integers",
                               "write e.g. 3,8,9,10") from None  # fmt: skip

    return Exclusions(
        reference=(args.mask_reference, args.mask_kind) if args.mask_reference else None,
        secondary=(args.mask_secondary, args.mask_kind) if args.mask_secondary else None,
        polygons=tuple(parse_polygons(args.exclude, "--exclude")) if args.exclude else (),
        scl_classes=ints(args.mask_scl_classes, "--mask-scl-classes"),
        qa_bits=ints(args.mask_qa_pixel_bits, "--mask-qa-pixel-bits"),
    )


def cmd_tiepoints(args: argparse.Namespace) -> None:
    """Tie points between two co-located rasters."""
    from costack.stages.tiepoints import TiePointParams, run_tiepoints

    for path in (args.ref, args.sec):
        if not Path(path).exists():
            raise CostackError("tiepoints", f"{path} does not exist", "give two co-located rasters")
    stem = str(Path(args.out).with_suffix(""))
    params = TiePointParams(max_shift=args.max_displacement,
                            multimodal=True if args.multimodal else None)  # fmt: skip
    model = run_tiepoints(
        args.ref, args.sec, args.out, stem + ".model.json", stem + ".png", params,
        label=Path(args.sec).stem,
        resolution_ratio=args.resolution_ratio,
        threads=args.threads,
        masks=_exclusions(args),
    )  # fmt: skip
    print(f"{model.tiepoints} tie points in {args.out}; model {model.chosen} in "
          f"{stem}.model.json; vectors in {stem}.png")  # fmt: skip


def cmd_qc(args: argparse.Namespace) -> None:
    """Residual misregistration of a secondary before and after co-registration."""
    from costack.stages.qc import run_qc

    for path in (args.ref, args.colocated, args.coregistered):
        if not Path(path).exists():
            raise CostackError("qc", f"{path} does not exist", "give the reference, the "
                               "co-located and the co-registered rasters")  # fmt: skip
    result = run_qc(args.ref, args.colocated, args.coregistered, args.out,
                    multimodal=True if args.multimodal else None,
                    resolution_ratio=args.resolution_ratio,
                    max_displacement=args.max_displacement, threads=args.threads,
                    confidence_tif=args.confidence, masks=_exclusions(args),
                    **({} if args.qc_points is None else
                       {"sample_points": args.qc_points}))  # fmt: skip
    after = result["after"]
    figure = (
        f"{after['pixels']['median']:.3f} px median on {after['points']} points"
        if after.get("figure") == "measured" else f"insufficient ({after['points']} points)"
    )  # fmt: skip
    print(f"residual after co-registration: {figure}; written to {args.out}")


def cmd_flow(args: argparse.Namespace) -> None:
    """Dense flow between two co-located rasters."""
    from costack.stages.flow import FlowParams, run_flow

    for path in (args.ref, args.sec):
        if not Path(path).exists():
            raise CostackError("flow", f"{path} does not exist", "give two co-located rasters")
    for path in args.radar_aux:
        if not Path(path).exists():
            raise CostackError(
                "--radar-aux", f"{path} does not exist",
                "give another polarisation of the secondary, co-located",
            )  # fmt: skip
    if args.radii:
        _check_radii(args.radii)
    params = FlowParams(
        mode=args.mode,
        radii=tuple(args.radii) if args.radii else None,
        max_displacement=args.max_displacement,
    )
    conf = args.confidence or str(Path(args.out).with_suffix("")) + ".confidence.tif"
    ratio = args.resolution_ratio
    support = args.support or str(Path(args.out).with_suffix("")) + ".support.tif"
    stats = run_flow(args.ref, args.sec, args.out, conf, params, stats_json=args.stats,
                     resolution_ratio=ratio, model_json=args.model, masks=_exclusions(args),
                     support_tif=support, hold_changes=not args.no_hold,
                     radar_aux=args.radar_aux)  # fmt: skip
    why = (stats.get("mode_choice") or {}).get("reason")
    start = (stats.get("start") or {}).get("kind") or (
        "tie-point model" if stats.get("tiepoint_model") else None)  # fmt: skip
    told = ", ".join(x for x in (f"mode {stats['mode']}" + (f" ({why})" if why else ""),
                                 start and f"start: {start}") if x)  # fmt: skip
    held = stats.get("change") or {}
    share = held.get("unsupported_fraction")
    if share is not None:
        told += f"; {100 * share:.1f} % of the overlap from the surroundings ({support})"
    print(f"flow written to {args.out} (confidence {conf}) in {stats['seconds']:.2f} s; {told}")


def _check_radii(radii: list[int]) -> None:
    """``--radii`` within the bounds of the configuration's ``flow_radii`` (one schema)."""
    from costack.config import load_schema

    items = load_schema()["properties"]["flow_radii"]["items"]
    lo, hi = items["minimum"], items["maximum"]
    if any(not lo <= r <= hi for r in radii):
        raise CostackError(
            "flow", f"--radii {' '.join(map(str, radii))} is out of range",
            f"give window radii from {lo} to {hi} pixels (or none: the mode's defaults)",
        )  # fmt: skip


def cmd_warp(args: argparse.Namespace) -> None:
    """Warp a co-located raster with a flow."""
    from costack.stages.coregister import run_warp

    for path in (args.sec, args.flow):
        if not Path(path).exists():
            raise CostackError("warp", f"{path} does not exist", "give the raster and its flow")
    run_warp(args.sec, args.flow, args.out, args.resampling, args.db)


def cmd_cog(args: argparse.Namespace) -> None:
    """Step cog."""
    from costack.stages.catalog import run_cog

    run_cog(args.src, args.out, compression=args.compression)


def cmd_catalog(args: argparse.Namespace) -> None:
    """Step catalog."""
    from costack.stages.catalog import run_catalog

    cogs = _key_paths(args.asset)
    flows = {}
    for spec in args.flow:
        n, sep, rest = spec.partition("=")
        parts = rest.split(",")
        if not sep or not n.isdigit() or len(parts) not in (3, 4):
            raise CostackError("--flow", f"{spec!r} is not N=DISPLACEMENT,CONFIDENCE,STATS"
                               "[,SUPPORT]",
                               "write e.g. 2=results/stack/2-displacement.tif,"
                               "results/stack/2-confidence.tif,results/flow/2.json")  # fmt: skip
        flows[int(n)] = tuple(parts)
    run_catalog(
        args.manifest, args.grid, cogs, args.reference, args.item_id, args.catalog, args.item,
        expressions=_expression_paths(args.expression), flows=flows or None,
        qc_json=args.qc, on_failed_registration=args.on_failed_registration,
        publish_dir=args.publish_dir,
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="costack",
        description="Co-registered stacking of optical and SAR images: run or rerun one step "
        "of the workflow by hand on the files of the previous step.",
    )
    parser.add_argument("--version", action="version", version=f"costack {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="co-register and stack: run the whole workflow with the service's parameters",
        description="Co-Registered Stacking: co-locate the listed assets of the input datasets "
        "on the reference asset's grid, co-register every secondary dataset to the reference "
        "(tie points and a dense GeFolki-family flow), evaluate the s-expressions, and write "
        "single-band Float32 COGs described by a STAC item.",
    )
    _add_config_args(p)
    p.add_argument("--out", default="costack-run", help="output folder (default costack-run)")
    p.add_argument("--item-id", help="identifier of the output STAC item")
    p.add_argument("--cores", type=int, default=2, help="cores to use (default 2)")
    p.add_argument("--profile", help="Snakemake profile folder or name (default, slurm)")
    p.add_argument("-n", "--dry-run", action="store_true", help="list the jobs, run nothing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate the parameters (config, items, rasters, grid)")
    _add_config_args(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "verify", help="check published files against the item's (or catalog's) checksums"
    )
    p.add_argument("item", help="the stack's item JSON (results/stack/ITEM_ID.json) or the run's "
                   "catalog (results/catalog.json), whose items are all checked")  # fmt: skip
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "validate", help="validate an item or catalog offline against the vendored STAC schemas",
        description="Validate a STAC item, or a catalog and every item it links, against the "
        "JSON schemas of STAC 1.1.0 and of each declared extension that costack vendors "
        "(nothing fetched: another version or an unvendored extension is an error).",
    )  # fmt: skip
    p.add_argument("document", help="results/stack/ITEM_ID.json or results/catalog.json")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "report", help="write a run's overview page (results/report.html)",
        description="The overview page of a finished run, as the workflow writes it: datasets, "
        "verdicts, QC residuals, swipe/flicker comparisons, displacement, quicklooks.",
    )  # fmt: skip
    _add_config_args(p)
    p.add_argument("--results", default="results",
                   help="the run's results folder (default results)")  # fmt: skip
    p.add_argument("--out", help="output HTML (default RESULTS/report.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("discover", help="resolve the listed assets into a manifest CSV")
    _add_config_args(p)
    p.add_argument("out", help="output manifest CSV (results/discover/manifest.csv)")
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("grid", help="compute the common grid from a manifest")
    p.add_argument("manifest")
    p.add_argument("reference", help="reference asset key, e.g. 1.nir")
    p.add_argument("out", help="output grid JSON (results/grid/grid.json)")
    p.add_argument("--aoi", help="area of interest in WKT (EPSG:4326)")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("colocate", help="warp one asset onto the grid (GDAL warper)")
    p.add_argument("manifest")
    p.add_argument("grid")
    p.add_argument("key", help="asset key, e.g. 2.nir")
    p.add_argument("out", help="output GeoTIFF (results/colocated/KEY.tif)")
    p.add_argument(
        "--resampling", default="bilinear",
        choices=["nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average"],
    )  # fmt: skip
    p.add_argument(
        "--gcp-corner", action="store_true",
        help="GCP pixel/line are GDAL area coordinates (default: pixel-centre indices, as S1 GRD)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--allowed-source", action="append", default=[], metavar="HOST",
                   help="as the config's allowed_sources; repeat")  # fmt: skip
    p.add_argument("--allowed-path", action="append", default=[], metavar="FOLDER",
                   help="as the config's allowed_paths; repeat")  # fmt: skip
    p.add_argument("--http-timeout", type=float, default=30.0,
                   help="seconds per HTTP request (config http_timeout)")  # fmt: skip
    p.add_argument("--http-retries", type=int, default=3,
                   help="retries of a failed HTTP read (config http_retries)")  # fmt: skip
    p.set_defaults(func=cmd_colocate)

    p = sub.add_parser(
        "coregister", help="reference-dataset asset: copied unmoved (secondaries: use warp)"
    )
    p.add_argument("colocated")
    p.add_argument("out")
    p.set_defaults(func=cmd_coregister)

    p = sub.add_parser(
        "bandmath",
        help="evaluate one s-expression 'name:(expression)' on co-registered rasters",
        description="Functions: + - * / < <= == != >= > & | asarray interp mean norm_diff "
        "where log10 sqrt abs min max. Nodata in any operand is nodata in the result.",
    )
    p.add_argument("expression", help="e.g. 'ndvi:(norm_diff 1.nir 1.red)'")
    p.add_argument(
        "--asset",
        action="append",
        default=[],
        metavar="KEY=PATH",
        help="raster of an asset of the expression, e.g. 1.nir=nir.tif; repeat",
    )
    p.add_argument("--grid", help="grid JSON (only for expressions that read no asset)")
    p.add_argument("out", help="output Float32 GeoTIFF")
    p.set_defaults(func=cmd_bandmath)

    p = sub.add_parser("tiepoints", help="sub-pixel tie points and global model (Yan et al. 2016)")
    p.add_argument("ref", help="reference raster")
    p.add_argument("sec", help="secondary raster on the same grid")
    p.add_argument("out", help="output CSV (model JSON and PNG are written beside it)")
    p.add_argument(
        "--multimodal",
        action="store_true",
        help="match CFOG descriptors (oriented gradients, NCC) whatever the rasters; by default "
        "SAR against optical and inverted local contrast are, other pairs match intensities",
    )
    p.add_argument(
        "--max-displacement",
        type=float,
        default=16.0,
        help="search range of the global prior (pixels)",
    )
    p.add_argument(
        "--resolution-ratio",
        type=float,
        default=None,
        help="secondary's native pixel size over the grid's (blurs the reference); default: "
        "the costack_resolution_ratio tag co-location writes, else read from the pixels "
        "(the periodic trace of an interpolation from a coarser grid; 1 when none)",
    )
    p.add_argument("--threads", type=int, default=2,
                   help="tiles matched at once on a grid matched by tiles")  # fmt: skip
    _add_mask_options(p)
    p.set_defaults(func=cmd_tiepoints)

    p = sub.add_parser(
        "flow", help="dense GeFolki-family flow between two co-located single-band rasters"
    )
    p.add_argument("ref", help="reference raster")
    p.add_argument("sec", help="secondary raster on the same grid")
    p.add_argument("out", help="output 2-band Float32 GeoTIFF: dx, dy in grid pixels")
    p.add_argument(
        "--mode",
        default="auto",
        choices=["auto", "folki", "efolki", "gefolki", "structure"],
        help="auto (the workflow's default): structure (edge strengths, ROEWA on the radar "
        "side, then efolki) for SAR against optical, the kinds read from the rasters' tags or, "
        "untagged, from their pixels; gefolki when their local contrast is inverted; else "
        "efolki (docs/sar.md)",
    )
    p.add_argument(
        "--radii",
        type=int,
        nargs="+",
        default=None,
        help="window radii at full resolution (widened for coarser secondaries); default by "
        "the mode: 32 8 for efolki and folki, 16 8 for gefolki and structure",
    )
    p.add_argument(
        "--max-displacement",
        type=float,
        default=16.0,
        help="largest displacement expected (pixels)",
    )
    p.add_argument(
        "--resolution-ratio",
        type=float,
        default=None,
        help="secondary's native pixel size over the grid's (blurs the reference); default: "
        "the costack_resolution_ratio tag co-location writes, else read from the pixels "
        "(the periodic trace of an interpolation from a coarser grid; 1 when none)",
    )
    p.add_argument(
        "--model", metavar="MODEL.json",
        help="the tie-point step's model (results/tiepoints/N.model.json): it seeds the flow "
        "when it is strong enough, as in the workflow",
    )  # fmt: skip
    p.add_argument("--confidence", help="confidence GeoTIFF (default OUT.confidence.tif)")
    p.add_argument("--stats", help="JSON file for the run's parameters and statistics")
    p.add_argument(
        "--support", metavar="RASTER",
        help="where the displacement is the data's own match (1) or was taken from the stable "
        "surroundings (0): default OUT.support.tif",
    )  # fmt: skip
    p.add_argument(
        "--no-hold", action="store_true",
        help="do not hold unsupported areas (changes, masks) to their surroundings: the flow "
        "as estimated everywhere (the workflow's flow_hold_changes: false)",
    )  # fmt: skip
    p.add_argument(
        "--radar-aux", metavar="RASTER", action="append", default=[],
        help="another polarisation of the secondary (VH beside VV), co-located like it; "
        "repeatable: the structure mode (SAR against optical) averages their edge strengths, "
        "as the workflow does with a SAR dataset's other backscatter assets",
    )  # fmt: skip
    _add_mask_options(p)
    p.set_defaults(func=cmd_flow)

    p = sub.add_parser(
        "qc", help="residual misregistration before and after co-registration (independent LSM)"
    )
    p.add_argument("ref", help="reference raster (results/colocated/REF.tif)")
    p.add_argument("colocated", help="the secondary before co-registration (results/colocated/)")
    p.add_argument("coregistered", help="the same after (results/coregistered/)")
    p.add_argument("out", help="output JSON (results/qc/N.json)")
    p.add_argument(
        "--multimodal", action="store_true",
        help="re-match CFOG descriptors whatever the rasters (default: decided from them)",
    )  # fmt: skip
    p.add_argument("--max-displacement", type=float, default=16.0,
                   help="search range used to decide the contrast relation (pixels)")  # fmt: skip
    p.add_argument(
        "--resolution-ratio", type=float, default=None,
        help="secondary's native pixel over the grid's; default: the costack_resolution_ratio "
        "tag co-location writes, else read from the pixels (1 when they show no resampling)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=2,
                   help="2 (as the rule): re-match before and after side by side")  # fmt: skip
    p.add_argument(
        "--confidence", default=None,
        help="the flow's confidence raster (results/flow/N.confidence.tif, as the rule): "
        "sample more points where it is low; default: uniform",
    )  # fmt: skip
    p.add_argument(
        "--qc-points", type=int, default=None,
        help="points re-matched when the QC's lattice holds more (config qc_points; default "
        "1024 as the rule's); 0: every point",
    )  # fmt: skip
    _add_mask_options(p)
    p.set_defaults(func=cmd_qc)

    p = sub.add_parser("warp", help="warp a co-located raster with a flow (nodata outside)")
    p.add_argument("sec")
    p.add_argument("flow")
    p.add_argument("out")
    p.add_argument("--resampling", default="bilinear", choices=["bilinear", "nearest"])
    p.add_argument("--db", action="store_true", default=None,
                   help="data in dB: warp linear power (default: from co-location's tag; a "
                   "raster without costack's tags is taken as linear)")  # fmt: skip
    p.set_defaults(func=cmd_warp)

    p = sub.add_parser("cog", help="write a raster as a validated Cloud Optimized GeoTIFF")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--compression", choices=["deflate", "zstd"], default="deflate",
                   help="the COG's codec (config cog_compression; default deflate)")  # fmt: skip
    p.set_defaults(func=cmd_cog)

    p = sub.add_parser("catalog", help="write the STAC catalog and the stack's item")
    p.add_argument("manifest")
    p.add_argument("grid")
    p.add_argument("reference")
    p.add_argument("catalog", help="output catalog JSON")
    p.add_argument("item", help="output item JSON (beside the COGs)")
    p.add_argument("--asset", action="append", default=[], metavar="KEY=COG", required=True)
    p.add_argument(
        "--expression",
        action="append",
        default=[],
        metavar="NAME:(EXPR)=COG",
        help="a band-math output: its expression as in the config, '=', its COG, e.g. "
        "'ndvi:(norm_diff 1.nir 1.red)=results/stack/ndvi.tif' (NAME=COG takes the expression "
        "recorded in the COG); repeat",
    )
    p.add_argument(
        "--flow",
        action="append",
        default=[],
        metavar="N=DISPLACEMENT,CONFIDENCE,STATS[,SUPPORT]",
        help="dataset N's flow COGs and results/flow/N.json, and its support COG "
        "(results/stack/N-support.tif: where registration came from the surroundings); repeat",
    )
    p.add_argument(
        "--qc",
        metavar="SUMMARY.json",
        help="results/qc/summary.json: verdicts into the item (a fail stops)",
    )
    p.add_argument("--on-failed-registration", default="stop", choices=["stop", "publish"])
    p.add_argument("--item-id", default="costack-stack")
    p.add_argument(
        "--publish-dir",
        metavar="DIR",
        help="link the COGs into DIR under their own names once the verdicts allow it (the "
        "workflow links results/cog/ into results/stack/, the item's folder) and point the item "
        "there; default: the item points to the COGs where they are",
    )
    p.set_defaults(func=cmd_catalog)
    return parser


#: Subcommands whose rasters :func:`costack.io.rasters.require_colocated` checks.
PIXEL_GRID_COMMANDS = ("tiepoints", "flow", "warp", "bandmath", "qc")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``costack`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from costack.jobs import PrintableFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        handlers=[handler])  # fmt: skip
    try:
        with warnings.catch_warnings():
            if args.command in PIXEL_GRID_COMMANDS:
                # rasters without georeferencing (PNGs, camera frames) of one size share one
                # pixel grid, which the step checks (a georeferenced one against them is
                # refused): rasterio's warning on every open tells the user nothing
                from rasterio.errors import NotGeoreferencedWarning

                warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
            args.func(args)
        if argv is None:  # the command's own process, about to end (not a caller's)
            from costack.jobs import freeze_heap

            freeze_heap()
    except CostackError as err:
        print(f"costack: error: {err}", file=sys.stderr)
        return 2
    except file_errors() as err:
        # a missing, unreadable or malformed file given to a step: one line, no traceback
        print(f"costack: error: {args.command}: {describe(err)}; check the files given",
              file=sys.stderr)  # fmt: skip
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
