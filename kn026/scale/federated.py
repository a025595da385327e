"""Federated feasibility: sites share histograms, never patient rows.

Each site screens its own patients (the CLI, the app, or the exported SQL of
:mod:`kn026.scale.portable` run in its own database) and shares one small JSON file: the
histogram of ``(fail mask, unknown mask)`` pairs with counts, plus what is needed to
check that all sites asked the same question. The coordinator adds the histograms
into one network funnel with a per-site breakdown::

    python -m kn026 histogram --cohort site_a.csv --stage 1 --site "Site A" --out a.json --suppress-below 5
    python -m kn026 merge a.json b.json c.json [--json]

Histogram file (``format: kn026-histogram``, ``version: 2``)
------------------------------------------------------------
``protocol``, ``stage``, ``site``, ``engine``; ``criteria_fingerprint``: a SHA-256 of
the stage's rule IDs, normalised rule SQL, derived values and parameter values after
the scenario's overrides (:func:`kn026.scale.portable.criteria_fingerprint`); ``scenario``:
name, fingerprint (overrides, disabled IDs, analyst rules; not the order) and that content; ``leaves``:
rule IDs in bit order; ``criteria``: criterion ID -> its leaves (protocol order);
``not_assessable``: rule ID -> missing columns at this site; ``total``: patients
screened; ``rows``: ``[fail, unknown, count]`` with each mask a hexadecimal string
(``"0x1a0"``, bit j = leaf j, any number of leaves: exact in every JSON parser) and the
count a JSON integer; ``suppression``: null or ``{"below": k, "suppressed": patients}``.
Version 1 files (masks as JSON integers, at most 63 leaves) are refused with a message
asking the site to export again.

Small-cell suppression policy (``--suppress-below k``)
------------------------------------------------------
Rows with ``0 < count < k`` are dropped, with complementary rows chosen by the app's one
suppression step (:func:`kn026.report.suppression.suppress_parts`: the rows add up to the
public ``total``, so one dropped row alone, or dropped rows adding up to fewer than k
patients, would be recovered by subtraction; the step drops the smallest further rows
until every dropped count could lie anywhere in an interval at least k wide). Only
their patient total is reported, as ``suppression.suppressed``; the number and the
patterns of the dropped rows are not disclosed. ``total`` still counts every patient. On merge those patients are counted
as screened with every assessable rule *unknown*: they fall out of the strict bound
and stay in the optimistic one, so the merged funnel's bounds remain true bounds
(strict <= truly eligible <= optimistic), only wider; totals stay exact. A site that
wants its total itself hidden must not take part (a total is needed for honest
network counts). Repeated releases of one site with different thresholds or
scenarios can be differenced; publish one release per question.

Merging rules
-------------
Histograms are refused with a message naming the sites when their format, protocol,
stage, scenario fingerprint, criteria fingerprint or leaf order differ, or when two
come from the same site. A rule that is not assessable at one site (a missing
column) but assessable elsewhere counts as *unknown* for that site's patients; a
rule not assessable anywhere stays n/a. The merged :class:`kn026.core.funnel.Histogram`
has ``site`` codes indexing the contributing site names (in the given order), and
:class:`MergedEngine` lets :mod:`kn026.core.analysis` build the network funnel, the
per-criterion table and the per-site breakdown from it exactly as for one cohort.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np

from kn026.base import masks as mw
from kn026.core import analysis
from kn026.core import funnel as fm
from kn026.core.criteria import Protocol, format_number
from kn026.core.funnel import Histogram
from kn026.core.scenario import Scenario
from kn026.scale.portable import (
    NO_SITE,
    criteria_fingerprint,
    effective_overrides,
    scenario_fingerprint,
    stage_rules,
)

FORMAT = "kn026-histogram"
VERSION = 2
_HEX = re.compile(r"^0x[0-9a-f]+$")


class FederatedError(ValueError):
    """A histogram file that cannot be used or merged; the message names the fix."""


# --------------------------------------------------------------------------- export


def _meta_of(engine_or_meta) -> tuple[Protocol, int, dict[str, list[str]], str]:
    """(protocol, stage, not_assessable, engine name) of an engine or a meta dict."""
    if isinstance(engine_or_meta, dict):
        meta = engine_or_meta
        return (meta["protocol"], int(meta["stage"]), dict(meta.get("not_assessable") or {}),
                str(meta.get("engine", "sql")))
    eng = engine_or_meta
    name = getattr(eng, "dialect", None) or "duckdb"
    return eng.protocol, int(eng.stage), dict(eng.not_assessable), name


def export_histogram(hist: Histogram, engine_or_meta, scenario: Scenario | None = None,
                     site_name: str = "site", suppress_below: int | None = None) -> dict:
    """The shareable histogram document of one site.

    ``engine_or_meta`` is the engine that made ``hist`` (:class:`kn026.core.engine.Engine`
    or a :class:`kn026.scale.portable.QueryEngine`) or a dict with ``protocol`` (a
    :class:`kn026.core.criteria.Protocol`), ``stage``, ``not_assessable`` and optionally
    ``engine``. ``scenario`` must be the one whose overrides made ``hist``. With
    ``suppress_below=k`` rows with fewer than k patients are dropped (see the module
    docstring).
    """
    protocol, stage, na, engine_name = _meta_of(engine_or_meta)
    scenario = scenario or Scenario()
    missing = [c.id for c in scenario.custom if c.id not in {crit.id for crit in protocol.criteria}]
    if missing:
        raise FederatedError(f"the scenario's custom criteria {', '.join(missing)} are not in the engine's "
                             "protocol: export the histogram of analysis.engine_for(engine, scenario)")
    site_name = str(site_name).strip()
    if not site_name:
        raise FederatedError("a site name is needed (--site NAME)")
    if suppress_below is not None and int(suppress_below) < 1:
        raise FederatedError(f"--suppress-below must be >= 1, not {suppress_below}")
    leaves = [r.id for r in stage_rules(protocol, stage)]
    if hist.site is not None:  # a site shares one histogram; its own sub-sites are summed
        hist = Histogram(hist.fail, hist.unknown, hist.count)
    hist = fm.merge(hist)
    if hist.used_bits >> len(leaves):
        raise FederatedError(f"the histogram uses bits beyond the {len(leaves)} leaves of "
                             f"{protocol.name} stage {stage}; was it made for another protocol or stage?")
    fail, unknown, count = _sorted_rows(hist)
    keep = count > 0
    suppression = None
    if suppress_below is not None:
        from kn026.report.suppression import suppress_parts

        k = int(suppress_below)
        rows = np.flatnonzero(keep)
        dropped = np.zeros(len(count), bool)
        dropped[rows] = suppress_parts(count[rows], int(count[rows].sum()), k)
        suppression = {"below": k, "suppressed": int(count[dropped].sum())}
        keep &= ~dropped
    criteria = [[c.id, [r.id for r in c.rules if stage in r.stages]]
                for c in protocol.criteria if stage in c.stages]
    return {
        "format": FORMAT,
        "version": VERSION,
        "protocol": protocol.name,
        "stage": stage,
        "site": site_name,
        "engine": engine_name,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "criteria_fingerprint": criteria_fingerprint(protocol, stage, scenario),
        "scenario": {
            "name": scenario.name,
            "fingerprint": scenario_fingerprint(protocol, scenario),
            "overrides": effective_overrides(protocol, scenario),
            "disabled": sorted(scenario.disabled),
            "order": list(scenario.order),
            **({"custom": [c.to_doc() for c in scenario.custom]} if scenario.custom else {}),
            **({"replace": dict(sorted(scenario.replace.items()))} if scenario.replace else {}),
        },
        "leaves": leaves,
        "criteria": criteria,
        "not_assessable": {rid: list(cols) for rid, cols in na.items()},
        "total": int(hist.total),
        "suppression": suppression,
        "rows": _rows(fail, unknown, count, keep),
    }


def _sorted_rows(hist: Histogram) -> tuple[list[int], list[int], np.ndarray]:
    """(fail masks, unknown masks as Python ints, counts) in a stable order: by fail, then unknown."""
    order = np.lexsort([*hist.unknown, *hist.fail])  # the last key sorts first: fail's top word
    fail, unknown = mw.ints_of(mw.take(hist.fail, order)), mw.ints_of(mw.take(hist.unknown, order))
    return fail, unknown, hist.count[order]


def _rows(fail: list[int], unknown: list[int], count: np.ndarray, keep: np.ndarray) -> list[list]:
    """The document's ``rows``: ``[fail, unknown, count]`` with masks as hexadecimal strings."""
    return [[f"{f:#x}", f"{u:#x}", n] for f, u, n, k in zip(fail, unknown, count.tolist(), keep.tolist(),
                                                             strict=True) if k]


def _mask_of(value) -> int | None:
    """A row's mask from its hexadecimal string, or None when it is not one."""
    return int(value, 16) if isinstance(value, str) and _HEX.match(value) else None


def write_histogram(path: str | Path, doc: dict) -> Path:
    """Write a histogram document as JSON (validated first)."""
    _validate(doc, str(path))
    path = Path(path)
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path


def read_histogram(path: str | Path) -> dict:
    """Read and validate a histogram document."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise FederatedError(f"cannot read histogram file {path}: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FederatedError(f"{path.name} is not a JSON histogram file: {err}") from None
    return _validate(doc, path.name)


_REQUIRED = {"format": str, "version": int, "protocol": str, "stage": int, "site": str,
             "criteria_fingerprint": str, "scenario": dict, "leaves": list, "criteria": list,
             "not_assessable": dict, "total": int, "rows": list}


def _validate(doc, where: str) -> dict:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FederatedError(f"{where} is not a {FORMAT} file (made by `python -m kn026 histogram`)")
    if doc.get("version") != VERSION:
        older = isinstance(doc.get("version"), int) and doc["version"] < VERSION
        raise FederatedError(
            f"{where} has format version {doc.get('version')!r}; this program reads version {VERSION}. "
            + ("Ask the site to export its histogram again with this version of kn026 "
               "(`python -m kn026 histogram` or the app's Network page); version 2 writes masks of any "
               "width as hexadecimal strings." if older else "Use the kn026 version that wrote it."))
    for key, typ in _REQUIRED.items():
        if not isinstance(doc.get(key), typ) or isinstance(doc.get(key), bool) and typ is int:
            raise FederatedError(f"{where}: field {key!r} is missing or not a {typ.__name__}")
    scen = doc["scenario"]
    if not isinstance(scen.get("name"), str) or not isinstance(scen.get("fingerprint"), str):
        raise FederatedError(f"{where}: the scenario needs a name and a fingerprint")
    nbits = len(doc["leaves"])
    if len(set(doc["leaves"])) != nbits:
        raise FederatedError(f"{where}: 'leaves' must list distinct rule IDs")
    limit = 1 << nbits
    total = 0
    for i, row in enumerate(doc["rows"]):
        if not isinstance(row, list) or len(row) != 3:
            raise FederatedError(f"{where}: row {i} must be [fail, unknown, count]")
        f, u, n = _mask_of(row[0]), _mask_of(row[1]), row[2]
        if f is None or u is None or not isinstance(n, int) or isinstance(n, bool):
            raise FederatedError(f"{where}: row {i} must be [fail, unknown, count]: two masks as hexadecimal "
                                 f"strings (\"0x1a0\") and a whole number, got {str(row)[:80]}")
        if not (f < limit and u < limit) or f & u or n < 0:
            raise FederatedError(f"{where}: row {i} {row} is not a valid mask pair and count for "
                                 f"{nbits} leaves")
        total += n
    supp = doc.get("suppression")
    if supp is not None:
        if not isinstance(supp, dict) or not all(isinstance(supp.get(k), int) for k in ("below", "suppressed")):
            raise FederatedError(f"{where}: 'suppression' must be null or {{below, suppressed}}")
        total += supp["suppressed"]
    if total != doc["total"]:
        raise FederatedError(f"{where}: rows and suppressed patients add up to {total}, "
                             f"but 'total' says {doc['total']}")
    unknown_na = set(doc["not_assessable"]) - set(doc["leaves"])
    if unknown_na:
        raise FederatedError(f"{where}: not_assessable names rules outside 'leaves': {sorted(unknown_na)}")
    return doc


# --------------------------------------------------------------------------- merge


def _check_same(docs: list[dict], key, what: str, fix: str, show=None) -> None:
    """Refuse unless `key(doc)` is the same for all docs; `show(doc)` describes a doc's value."""
    show = show or (lambda d: str(key(d)))
    first = docs[0]
    for doc in docs[1:]:
        if key(first) != key(doc):
            raise FederatedError(
                f"cannot merge: {what} differs: site {first['site']!r} has {show(first)}, site "
                f"{doc['site']!r} has {show(doc)}. {fix}")


def merge_histograms(docs: list[dict]) -> tuple[Histogram, dict]:
    """Add site histograms into one network histogram with site codes.

    Returns ``(hist, meta)``: ``hist.sites`` are the site names in the order given;
    ``meta`` holds protocol, stage, scenario, fingerprint, leaves, criteria, the
    network-wide ``not_assessable`` rules, ``partially_assessable`` (rule -> sites
    where it was n/a, counted there as unknown), per-site totals and suppression.
    """
    if not docs:
        raise FederatedError("no histogram files to merge")
    docs = [_validate(d, f"histogram of {d.get('site', '?')!r}" if isinstance(d, dict) else "histogram")
            for d in docs]
    names = [d["site"] for d in docs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FederatedError(f"cannot merge: more than one histogram from site(s) {', '.join(twice)}; "
                             "each site contributes once (rename or drop the duplicate)")
    _check_same(docs, lambda d: d["protocol"], "the protocol",
                "Every site must screen with the same criteria file.")
    _check_same(docs, lambda d: d["stage"], "the stage",
                "Merge histograms of one stage only.", show=lambda d: f"stage {d['stage']}")
    _check_same(docs, lambda d: d["scenario"]["fingerprint"], "the scenario",
                "Every site must run the same scenario file (or none).",
                show=lambda d: f"scenario {d['scenario']['name']!r} (fingerprint "
                               f"{d['scenario']['fingerprint'][:19]}...)")
    _check_same(docs, lambda d: d["criteria_fingerprint"], "the criteria fingerprint",
                "The sites used different criteria files or thresholds; re-run every site with the "
                "same criteria file and scenario.", show=lambda d: d["criteria_fingerprint"][:19] + "...")
    _check_same(docs, lambda d: d["leaves"], "the leaf (bit) order",
                "Re-run every site with the same criteria file.", show=lambda d: f"{len(d['leaves'])} leaves")
    leaves = docs[0]["leaves"]
    bit = {rid: j for j, rid in enumerate(leaves)}
    na_everywhere = set.intersection(*(set(d["not_assessable"]) for d in docs))
    assessable = sum(1 << j for j, rid in enumerate(leaves) if rid not in na_everywhere)
    width = mw.width_for(len(leaves))
    fails, unknowns, counts, sites = [], [], [], []
    partial: dict[str, list[str]] = {}
    per_site = []
    for code, doc in enumerate(docs):
        rows = doc["rows"]
        f = mw.words_of([_mask_of(r[0]) for r in rows], width)
        u = mw.words_of([_mask_of(r[1]) for r in rows], width)
        n = np.array([r[2] for r in rows], dtype=np.int64)
        local_na = [rid for rid in doc["not_assessable"] if rid not in na_everywhere]
        for rid in local_na:
            partial.setdefault(rid, []).append(doc["site"])
        na_bits = mw.split(sum(1 << bit[rid] for rid in local_na), width)
        u = (u | na_bits[:, None]) & ~f
        supp = (doc.get("suppression") or {}).get("suppressed", 0)
        if supp:
            f = np.concatenate([f, np.zeros((width, 1), np.uint64)], axis=1)
            u = np.concatenate([u, mw.split(assessable, width)[:, None]], axis=1)
            n = np.append(n, np.int64(supp))
        fails.append(f)
        unknowns.append(u)
        counts.append(n)
        sites.append(np.full(len(n), code, np.int32))
        per_site.append({"site": doc["site"], "total": doc["total"], "suppressed": supp,
                         "suppress_below": (doc.get("suppression") or {}).get("below"),
                         "engine": doc.get("engine", ""), "not_assessable": sorted(local_na)})
    hist = Histogram(np.concatenate(fails, axis=1), np.concatenate(unknowns, axis=1), np.concatenate(counts),
                     np.concatenate(sites), tuple(names))
    missing: dict[str, set[str]] = {}
    for doc in docs:
        for rid, cols in doc["not_assessable"].items():
            if rid in na_everywhere:
                missing.setdefault(rid, set()).update(cols)
    first = docs[0]
    meta = {
        "protocol": first["protocol"],
        "stage": first["stage"],
        "scenario": first["scenario"],
        "criteria_fingerprint": first["criteria_fingerprint"],
        "leaves": list(leaves),
        "criteria": first["criteria"],
        "not_assessable": {rid: sorted(cols) for rid, cols in missing.items()},
        "partially_assessable": partial,
        "sites": per_site,
        "total": int(sum(d["total"] for d in docs)),
        "suppressed": int(sum(s["suppressed"] for s in per_site)),
    }
    return hist, meta


def scenario_of(meta: dict) -> Scenario:
    """The scenario recorded in a histogram document or merge meta."""
    scen = meta["scenario"]
    overrides = {rid: {p: Decimal(v) for p, v in vals.items()} for rid, vals in scen.get("overrides", {}).items()}
    return Scenario(scen["name"], "", overrides, frozenset(scen.get("disabled", ())), tuple(scen.get("order", ())))


@dataclass(frozen=True)
class NetworkRule:
    """A leaf rule as the site files name it (ID and stage only: the SQL stayed at the sites)."""

    id: str
    stages: tuple[int, ...]


@dataclass(frozen=True)
class NetworkCriterion:
    id: str
    stages: tuple[int, ...]
    rules: tuple[NetworkRule, ...]


@dataclass(frozen=True)
class NetworkProtocol:
    name: str
    criteria: tuple[NetworkCriterion, ...]


@dataclass(frozen=True)
class NetworkCohort:
    present: frozenset[str]
    n: int


@dataclass
class MergedEngine:
    """An engine look-alike over a merged histogram, for :mod:`kn026.core.analysis`.

    ``analysis.run(MergedEngine(hist, meta), scenario_of(meta))`` gives the network
    funnel; ``analysis.by_site`` the per-site breakdown. Only the scenario the sites
    ran can be analysed (criteria can still be reordered or left out).
    """

    hist: Histogram
    meta: dict

    def __post_init__(self):
        m = self.meta
        self.stage = int(m["stage"])
        criteria = tuple(
            NetworkCriterion(cid, (self.stage,), tuple(NetworkRule(rid, (self.stage,)) for rid in leaf_ids))
            for cid, leaf_ids in m["criteria"])
        self.protocol = NetworkProtocol(m["protocol"], criteria)
        self.bit = {rid: j for j, rid in enumerate(m["leaves"])}
        self.not_assessable = dict(m["not_assessable"])
        self.cohort = NetworkCohort(frozenset({"site_id"}), self.hist.total)
        self.rules_key = None  # the sites screened the scenario's own rules; none can be added here

    def histogram(self, overrides: dict | None = None, by_site: bool = False) -> Histogram:
        wanted = {rid: {p: format_number(v) for p, v in vals.items()}
                  for rid, vals in (overrides or {}).items() if vals}
        recorded = {rid: {p: format_number(v) for p, v in vals.items()}
                    for rid, vals in self.meta["scenario"].get("overrides", {}).items()}
        if wanted != recorded:
            raise FederatedError("the sites screened with other thresholds; a new threshold needs every "
                                 "site to re-run its histogram")
        if by_site:
            return self.hist
        return Histogram(self.hist.fail, self.hist.unknown, self.hist.count)


def network_result(hist: Histogram, meta: dict, order=None) -> tuple[analysis.Result, object]:
    """(network funnel result, per-site table) of a merged histogram."""
    engine = MergedEngine(hist, meta)
    scenario = scenario_of(meta)
    return analysis.run(engine, scenario, order), analysis.by_site(engine, scenario)


# --------------------------------------------------------------------------- in memory (the app)

MAX_FILE_BYTES = 64 * 1024 * 1024  # a 10M-patient site's histogram is a few MB


def histogram_from_bytes(data: bytes, name: str, max_bytes: int = MAX_FILE_BYTES) -> dict:
    """Read and validate an uploaded histogram file held in memory (the app never writes it).

    Stricter than :func:`read_histogram` about the parts a merge later relies on (criteria
    grouping, scenario values, missing-column lists), so that a malformed or hostile file
    is refused here with a message naming the file, never fails later with a traceback.
    """
    if len(data) > max_bytes:
        raise FederatedError(f"{name} is {len(data) / 2**20:.1f} MB; a histogram file is at most "
                             f"{max_bytes / 2**20:.0f} MB. Is it a cohort file? Share the histogram "
                             "made by `python -m kn026 histogram` or the app's Network page instead.")
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise FederatedError(f"{name} is not a text (UTF-8 JSON) file; upload the .json histogram a site "
                             "made with `python -m kn026 histogram` or the app's Network page") from None
    except (ValueError, RecursionError) as err:
        raise FederatedError(f"{name} is not valid JSON ({str(err)[:120]}); upload the file as the site "
                             "sent it, unedited") from None
    doc = _validate(doc, name)
    _validate_parts(doc, name)
    return doc


def _validate_parts(doc: dict, where: str) -> None:
    """The nested fields that merging and :func:`scenario_of` read, checked for shape."""
    leaves = set(doc["leaves"])
    if not all(isinstance(r, str) for r in doc["leaves"]):
        raise FederatedError(f"{where}: 'leaves' must be rule IDs (text)")
    for item in doc["criteria"]:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or not isinstance(item[1], list) or not set(item[1]) <= leaves
                or not all(isinstance(r, str) for r in item[1])):
            raise FederatedError(f"{where}: 'criteria' must be [criterion ID, [rule IDs from 'leaves']] pairs; "
                                 f"found {str(item)[:80]}")
    for rid, cols in doc["not_assessable"].items():
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise FederatedError(f"{where}: not_assessable[{rid!r}] must be a list of column names")
    scen = doc["scenario"]
    overrides = scen.get("overrides", {})
    if not isinstance(overrides, dict):
        raise FederatedError(f"{where}: the scenario's overrides must be {{rule: {{parameter: value}}}}")
    for rid, vals in overrides.items():
        if not isinstance(vals, dict):
            raise FederatedError(f"{where}: the scenario's overrides for {rid!r} must be {{parameter: value}}")
        for param, value in vals.items():
            try:
                Decimal(str(value))
            except ArithmeticError:
                raise FederatedError(f"{where}: scenario value {rid}.{param} = {str(value)[:40]!r} is not a "
                                     "number") from None
    for key in ("disabled", "order"):
        if not isinstance(scen.get(key, []), list) or not all(isinstance(v, str) for v in scen.get(key, [])):
            raise FederatedError(f"{where}: the scenario's {key!r} must be a list of IDs")


def network_histogram(hist: Histogram, meta: dict, name: str | None = None) -> dict:
    """The merged network as one histogram document (the same format as a site's file).

    Site codes are summed, so the document can itself be merged into a larger network
    (regions into a country, say) by :func:`merge_histograms`; ``network.sites`` records
    which sites it contains, their totals and their own suppression. Patients that sites
    suppressed stay suppressed: they are taken back out of the all-unknown row and
    reported in ``suppression.suppressed`` (``below`` is the largest threshold any site
    used). Rules that were not assessable at some sites are already unknown for those
    sites' patients; ``not_assessable`` lists the rules not assessable anywhere.
    """
    names = [s["site"] for s in meta["sites"]]
    name = (name or "").strip() or f"Network of {len(names)} sites"
    leaves = meta["leaves"]
    merged = fm.merge(Histogram(hist.fail, hist.unknown, hist.count))
    count = merged.count.astype(np.int64).copy()
    suppressed = int(meta.get("suppressed", 0))
    if suppressed:
        assessable = sum(1 << j for j, rid in enumerate(leaves) if rid not in meta["not_assessable"])
        at = np.flatnonzero(mw.equal(merged.fail, 0) & mw.equal(merged.unknown, assessable))
        if len(at) != 1 or count[at[0]] < suppressed:
            raise FederatedError("the merged histogram does not hold the suppressed patients it should; "
                                 "merge the site files again")
        count[at[0]] -= suppressed
    fail, unknown, count = _sorted_rows(Histogram(merged.fail, merged.unknown, count))
    rows = _rows(fail, unknown, count, count > 0)
    below = max((s["suppress_below"] for s in meta["sites"] if s.get("suppress_below")), default=None)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "protocol": meta["protocol"],
        "stage": int(meta["stage"]),
        "site": name,
        "engine": "merged",
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "criteria_fingerprint": meta["criteria_fingerprint"],
        "scenario": meta["scenario"],
        "leaves": list(leaves),
        "criteria": meta["criteria"],
        "not_assessable": {rid: list(cols) for rid, cols in meta["not_assessable"].items()},
        "total": int(meta["total"]),
        "suppression": {"below": int(below or 1), "suppressed": suppressed} if suppressed else None,
        "rows": rows,
        "network": {"sites": meta["sites"], "partially_assessable": meta["partially_assessable"]},
    }
    return _validate(doc, name)


def differences(doc: dict, ref: dict) -> list[str]:
    """What keeps `doc` from merging with `ref`, for a file list: ["stage 2"], ["scenario 'X'"], ...

    The criteria fingerprint covers stage and thresholds, so it is named only when
    protocol, stage and scenario agree (another criteria file or a hand-edited value).
    """
    out = [f"protocol {doc['protocol']}"] if doc["protocol"] != ref["protocol"] else []
    out += [f"stage {doc['stage']}"] if doc["stage"] != ref["stage"] else []
    if doc["scenario"]["fingerprint"] != ref["scenario"]["fingerprint"]:
        out.append(f"scenario {doc['scenario']['name']!r}")
    if out:
        return out
    if doc["criteria_fingerprint"] != ref["criteria_fingerprint"]:
        return ["criteria or thresholds"]
    return ["rule order"] if doc["leaves"] != ref["leaves"] else []


def check_no_overlap(docs: list[dict]) -> None:
    """Refuse a network file merged again with one of the sites it already contains
    (the names match, so :func:`merge_histograms` alone would count those patients twice)."""
    seen: dict[str, tuple[str, bool]] = {}
    for doc in docs:
        net = doc.get("network") if isinstance(doc.get("network"), dict) else {}
        listed = net.get("sites") if isinstance(net.get("sites"), list) else []
        inner = [s.get("site") for s in listed if isinstance(s, dict) and isinstance(s.get("site"), str)]
        for site in inner or [doc["site"]]:
            if site in seen and (inner or seen[site][1]):  # two plain files: merge_histograms says so
                raise FederatedError(
                    f"cannot merge: site {site!r} is in both {seen[site][0]!r} and {doc['site']!r}; its "
                    "patients would count twice. Leave out the single site's file or the network file.")
            seen.setdefault(site, (doc["site"], bool(inner)))


__all__ = ["FederatedError", "MAX_FILE_BYTES", "MergedEngine", "NO_SITE", "check_no_overlap",
           "differences", "export_histogram", "histogram_from_bytes", "merge_histograms", "network_histogram",
           "network_result", "read_histogram", "scenario_of", "write_histogram"]
