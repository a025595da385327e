"""The protocol's time windows as data: assessment windows and event look-backs.

Dictionary section 1 tells two kinds of dated inputs apart. An *assessment* (a lab,
a vital sign, an ECG, the RECIST baseline: `schema.ASSESSED`) counts when it is dated
0 to N days before the index date, both ends included; an older result is no
assessment, and the column is NULL and listed in `stale_columns`. An *event* (the
record-based `days_since_*` and dose columns) is searched back over a look-back that
must never be shorter than the window of a rule reading it, or an event inside the
window would read as "none on record".

A protocol file holds both under `windows:` (see kn026/protocols/kn026_001.yaml);
`criteria.build_protocol` builds them with `build_windows` and validates them against
the rules, so nothing protocol-specific lives in an importer. Importers ask
`protocol.windows.assessment_days(column)` / `.lookback_days(column)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from sqlglot import exp

from kn026.base import schema
from kn026.base.sqlpass import names_in, parse_predicate

ALL = "all"  # an event look-back over the whole record
DERIVED = "derived"  # an event look-back derived from the rules reading the column
_COMPARISONS = (exp.LT, exp.LTE, exp.GT, exp.GTE, exp.EQ, exp.NEQ)
_DAY_UNITS = ("days", "day", "d")


@dataclass(frozen=True)
class Window:
    """One column's window: `days` before the index date (None: the whole record), and why."""

    column: str
    kind: str  # "assessment" or "event"
    days: int | None
    basis: str

    def covers(self, days_before: int) -> bool:
        """True for a result or event dated `days_before` days before the index date (0 = that day)."""
        return days_before >= 0 and (self.days is None or days_before <= self.days)

    def text(self) -> str:
        if self.kind == "assessment":
            return f"0-{self.days} days before the index date ({self.basis})"
        span = "the whole record" if self.days is None else f"{self.days} days"
        return f"look-back {span} ({self.basis})"


@dataclass(frozen=True)
class Windows:
    """Every window of a protocol; `assessment` and `events` map a dictionary column to its Window."""

    assessment: Mapping[str, Window] = field(default_factory=dict)
    events: Mapping[str, Window] = field(default_factory=dict)

    def window(self, column: str) -> Window | None:
        """The column's window (a ULN column: its value's), or None when the protocol gives none."""
        column = schema.ULN_OF.get(column, column)
        return self.assessment.get(column) or self.events.get(column)

    def assessment_days(self, column: str) -> int | None:
        """N of "dated 0 to N days before the index date", or None when the protocol gives no window."""
        w = self.assessment.get(schema.ULN_OF.get(column, column))
        return w.days if w else None

    def lookback_days(self, column: str) -> int | None:
        """How far back an importer searches an event column; None: the whole record (also when
        the protocol declares nothing, since a longer search is never wrong)."""
        w = self.events.get(column)
        return w.days if w else None

    def with_assessment_days(self, days: int | None) -> Windows:
        """The same windows with every assessment window set to `days` (an importer's
        --lookback-days); the event look-backs never change. None returns self."""
        if days is None:
            return self
        days = check_days(days, "lookback_days")
        basis = f"overridden: --lookback-days {days}"
        return replace(self, assessment={c: Window(c, "assessment", days, basis) for c in sorted(schema.ASSESSED)})


def check_days(value, where: str) -> int:
    """A whole number of days >= 0, or ValueError naming `where` and the fix."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where} = {value!r}: give a whole number of days >= 0")
    return value


# ------------------------------------------------------------------------------------ building


def build_windows(doc, rules, derived, error=ValueError) -> Windows:
    """Validate a protocol's `windows:` section against its rules and build the Windows.

    `rules` are criteria.Rule objects, `derived` the protocol's derived values; `error` is
    the exception class raised (criteria.CriteriaError). Without a `windows:` section there
    are no assessment windows and the event look-backs are those derivable from the rules.
    """
    reads = _reads(rules, derived)
    criteria_ids = {r.criterion for r in rules} | {r.id for r in rules}
    if doc is None:
        events = {}
        for col in sorted(schema.EVENTS & set(reads)):
            days, basis = _derive(col, rules, derived)
            if basis:
                events[col] = Window(col, "event", days, _basis(days, basis))
        return Windows({}, events)
    if not isinstance(doc, dict) or set(doc) - {"assessment", "events"}:
        raise error("'windows' must be a mapping with 'assessment' (a list of groups: days, basis, columns) "
                    "and 'events' (event column: derived | all | days)")
    assessment = _assessment(doc.get("assessment") or [], reads, rules, criteria_ids, error)
    events = _events(doc.get("events") or {}, reads, rules, derived, error)
    return Windows(assessment, events)


def _reads(rules, derived) -> dict[str, list[str]]:
    """Dictionary column -> the IDs of the rules reading it (directly or through a derived value)."""
    out: dict[str, list[str]] = {}
    for r in rules:
        for col in sorted(set().union(*r.columns.values())):
            out.setdefault(col, []).append(r.id)
    return out


def _assessment(groups, reads, rules, criteria_ids, error) -> dict[str, Window]:
    if not isinstance(groups, list):
        raise error("windows.assessment must be a list of groups, each {days: N, basis: ..., columns: [...]}")
    out: dict[str, Window] = {}
    for i, g in enumerate(groups, 1):
        where = f"windows.assessment group {i}"
        if not isinstance(g, dict) or set(g) - {"days", "basis", "columns"}:
            raise error(f"{where}: give days, basis and columns (and nothing else)")
        try:
            days = check_days(g.get("days"), f"{where} days")
        except ValueError as err:
            raise error(str(err)) from None
        basis = str(g.get("basis") or "").strip()
        if not basis:
            raise error(f"{where}: say where the {days}-day window comes from in `basis` (a criterion ID "
                        f"whose text sets it, or 'default: why')")
        cols = g.get("columns")
        if not isinstance(cols, list) or not cols:
            raise error(f"{where}: `columns` must list the assessed columns the window applies to")
        for col in cols:
            col = str(col)
            if col in schema.ULN_OF:
                raise error(f"{where}: {col} comes from the same record as {schema.ULN_OF[col]} and shares its "
                            f"window; list {schema.ULN_OF[col]} instead")
            if col not in schema.BY_NAME:
                raise error(f"{where}: {col!r} is not a dictionary column")
            if col not in schema.ASSESSED:
                kind = "an event column: give it a look-back under windows.events" if col in schema.EVENTS \
                    else "not a measurement taken at screening (schema.ASSESSED)"
                raise error(f"{where}: {col} is {kind}; remove it from the assessment windows")
            if col in out:
                raise error(f"{where}: {col} already has a window ({out[col].days} days); list it once")
            out[col] = Window(col, "assessment", days, basis)
    missing = sorted(c for c in schema.ASSESSED & set(reads) if c not in out)
    if missing:
        c = missing[0]
        raise error(f"windows.assessment: {c} (read by {', '.join(reads[c])}) has no assessment window; add it "
                    f"to a group (days: N, basis: the criterion or 'default: why')"
                    + (f"; also without one: {', '.join(missing[1:])}" if len(missing) > 1 else ""))
    # a group whose basis is a criterion (or rule) ID: every assessed column its rules read needs that window
    for days, basis in sorted({(w.days, w.basis) for w in out.values() if w.basis in criteria_ids}):
        for r in rules:
            if basis not in (r.id, r.criterion):
                continue
            for other in sorted(set().union(*r.columns.values())):
                if other in schema.ASSESSED and other in out and out[other].days > days:
                    raise error(f"windows.assessment: {other} is read by {r.id}, whose results count within "
                                f"{days} days ({basis}), but its window is {out[other].days} days; move "
                                f"{other} to the {days}-day group")
    return out


def _events(doc, reads, rules, derived, error) -> dict[str, Window]:
    if not isinstance(doc, dict):
        raise error("windows.events must map an event column to derived, all, a number of days, "
                    "or {days: ..., basis: ...}")
    out: dict[str, Window] = {}
    for col, spec in doc.items():
        where = f"windows.events.{col}"
        if col not in schema.BY_NAME:
            raise error(f"{where}: {col!r} is not a dictionary column")
        if col not in schema.EVENTS:
            raise error(f"{where}: {col} is not an event (record-based) column"
                        + ("; give it an assessment window under windows.assessment" if col in schema.ASSESSED
                           else ""))
        basis = ""
        if isinstance(spec, dict):
            if set(spec) - {"days", "basis"}:
                raise error(f"{where}: give days (derived | all | N) and basis")
            basis = str(spec.get("basis") or "").strip()
            spec = spec.get("days")
        bound, why = _derive(col, rules, derived)
        if spec == DERIVED:
            if not why:
                raise error(f"{where}: no look-back can be derived (no rule compares {col} with a parameter in "
                            f"days); give the number of days, or all, and the basis")
            out[col] = Window(col, "event", bound, _basis(bound, why))
            continue
        if spec == ALL:
            out[col] = Window(col, "event", None, basis or "the whole record")
            continue
        try:
            days = check_days(spec, where)
        except ValueError:
            raise error(f"{where} = {spec!r}: give derived, all, or a whole number of days >= 0") from None
        if why and (bound is None or days < bound):
            need = "the whole record (all)" if bound is None else f"at least {bound} days"
            raise error(f"{where}: a look-back of {days} days is shorter than the window the rules can set "
                        f"({why}); give {need}, or derived")
        if not basis:
            raise error(f"{where}: say where the {days}-day look-back comes from in `basis`")
        out[col] = Window(col, "event", days, basis)
    missing = []
    for col in sorted(schema.EVENTS & set(reads)):
        if col in out:
            continue
        bound, why = _derive(col, rules, derived)
        if not why:
            missing.append(col)
        else:
            out[col] = Window(col, "event", bound, _basis(bound, why))
    if missing:
        raise error(f"windows.events: {missing[0]} (read by {', '.join(reads[missing[0]])}) has no look-back and "
                    f"none can be derived from its rules; give {{days: N or all, basis: why}}"
                    + (f"; also without one: {', '.join(missing[1:])}" if len(missing) > 1 else ""))
    return dict(sorted(out.items()))


def _derive(col: str, rules, derived) -> tuple[int | None, str]:
    """(look-back days or None for the whole record, why) an event column needs from the rules
    reading it; (None, "") when it cannot be derived.

    A rule that reads a missing date as unknown (`null_is_unknown`) needs the whole record
    (an event beyond any look-back would turn a pass into unknown). Otherwise each comparison
    of the column with day parameters (directly or through a derived value, which clamps
    between them) needs the largest value a scenario may give them: their allowed maximum.
    """
    found: list[tuple[int, str]] = []
    for r in rules:
        if not any(col in cols for cols in r.columns.values()):
            continue
        if col in r.null_is_unknown:
            return None, f"{r.id} reads a missing {col} as unknown, so the whole record"
        for sql in r.sql.values():
            tree = parse_predicate(sql, r.id)
            compared = False
            for cmp in tree.find_all(*_COMPARISONS):
                sides = (cmp.this, cmp.expression)
                if not any(isinstance(s, exp.Column) and s.name == col for s in sides):
                    continue
                other = next(s for s in sides if not (isinstance(s, exp.Column) and s.name == col))
                params = _params_in(other, derived)
                days = [r.params[p] for p in params if p in r.params and r.params[p].unit.strip() in _DAY_UNITS]
                if not days or any(p.high is None for p in days):
                    return None, ""
                top = max(days, key=lambda p: p.high)
                found.append((int(top.high), f"{r.id} {top.name} up to {top.high} days"))
                compared = True
            if not compared:
                return None, ""
    if not found:
        return None, ""
    days = max(d for d, _ in found)
    return days, "; ".join(dict.fromkeys(w for _, w in found))


def _basis(days: int | None, why: str) -> str:
    if days is None:
        return f"derived: {why}"
    return f"derived: the longest window a scenario can set ({why})"


def _params_in(node: exp.Expression, derived) -> set[str]:
    cols, params = names_in(node)
    for name in cols:
        if name in derived:
            _, more = names_in(parse_predicate(derived[name].sql, name))
            params |= more
    return set(params)
