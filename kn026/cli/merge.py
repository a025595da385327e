"""`python -m kn026 merge`: site histograms into one network funnel with a per-site breakdown."""

from __future__ import annotations

import json
from pathlib import Path

from kn026.cli.common import jsonable, print_tables
from kn026.scale.federated import (
    merge_histograms,
    network_histogram,
    network_result,
    read_histogram,
    write_histogram,
)


def add_cli(subparsers) -> None:
    """Register ``merge``: site histograms into one network funnel."""
    m = subparsers.add_parser(
        "merge", help="merge site histograms into one network funnel",
        description="Add histogram files from several sites into one network funnel with a per-site "
                    "breakdown. Files made with other criteria, scenario or stage are refused.")
    m.add_argument("files", nargs="+", help="histogram .json files")
    m.add_argument("--order", help="criterion IDs in funnel order, comma-separated")
    m.add_argument("--json", action="store_true", help="JSON output")
    m.add_argument("--out", help="also write the merged network histogram (all sites) to this JSON")
    m.set_defaults(func=main_merge)


def main_merge(args) -> int:

    docs = [read_histogram(path) for path in args.files]
    hist, meta = merge_histograms(docs)
    order = [t.strip() for t in (args.order or "").split(",") if t.strip()] or None
    result, sites = network_result(hist, meta, order)
    if args.out:  # the same format as a site's file: it can join a larger network
        write_histogram(Path(args.out), network_histogram(hist, meta))
    if args.json:
        doc = {"protocol": meta["protocol"], "stage": meta["stage"], "scenario": meta["scenario"]["name"],
               "criteria_fingerprint": meta["criteria_fingerprint"], "totals": result.totals,
               "sites": sites.to_dict(orient="records"), "site_files": meta["sites"],
               "suppressed": meta["suppressed"],
               # as `funnel --json`: rule ID -> missing columns (here: at every site)
               "not_assessable": dict(meta["not_assessable"]),
               "not_assessable_criteria": result.plan.not_assessable,
               "partially_assessable": meta["partially_assessable"],
               "disabled": list(result.plan.disabled),
               "funnel": result.funnel.to_dict(orient="records"),
               "criteria": result.stats.to_dict(orient="records")}
        print(json.dumps(doc, indent=2, default=jsonable))
        return 0
    t = result.totals
    print(f"{meta['protocol']} stage {meta['stage']}, scenario {meta['scenario']['name']!r}, "
          f"network of {len(meta['sites'])} site(s): {t['screened']} screened, {t['strict']} eligible "
          f"(strict), {t['optimistic']} eligible (optimistic), {t['unknown']} unknown")
    if meta["suppressed"]:
        print(f"  {meta['suppressed']} patients in suppressed small cells count as unknown on every rule "
              "(in the optimistic bound, out of the strict one)")
    for rid, where in meta["partially_assessable"].items():
        print(f"  {rid}: not assessable at {', '.join(where)}; counted as unknown there")
    for cid, cols in result.plan.not_assessable.items():
        print(f"  {cid}: n/a at every site (missing column(s) {', '.join(cols)})")
    print()
    print(sites.to_string(index=False))
    print_tables(result)
    return 0
