"""Test cohorts: boundary-heavy values per dictionary column, as Hypothesis strategies.

Values sit on, just inside and just outside every protocol threshold, include the
ULN products that binary floating point gets wrong, and NULL for every column.
"""

from __future__ import annotations

import csv
import io
from collections import Counter

from hypothesis import strategies as st

from kn026.base import schema
from kn026.core import funnel as fm

FLAG = (None, True, False)
DAYS = (None, 0, 6, 7, 13, 14, 27, 28, 90, 91, 182, 183, 400)
GRADE = (None, 0, 1, 2, 3)

VALUES: dict[str, tuple] = {
    "site_id": ("S1", "S2", None),
    "country": ("China", "Spain", None),
    "screening_date": (None, "2024-05-01"),
    "age_years": (None, 17, 17.9, 18, 18.1, 60, 68, 90),
    "sex": (None, "F", "M"),
    "weight_kg": (None, 30, 40, 70.5, 100),
    "primary_site": (None, "stomach", "gej", "colon"),
    "histology": (None, "adenocarcinoma", "squamous", "signet_ring_cell_carcinoma", "poorly_cohesive_carcinoma"),
    "disease_extent": (None, "locally_advanced_unresectable", "recurrent", "metastatic", "resectable"),
    "her2_ihc": (None, 0, 1, 2, 3),
    "her2_ish": (None, "positive", "negative"),
    "prior_systemic_lines": (None, 0, 1, 2, 3),
    "measurable_lesions": (None, 0, 1, 2),
    "nonmeasurable_lesions": (None, 0, 1),
    "ecog": (None, 0, 1, 2, 3),
    "life_expectancy_months": (None, 2.9, 3, 6),
    "anc_1e9_l": (None, 1.4, 1.5, 1.6),
    "platelets_1e9_l": (None, 89, 90, 91),
    "hemoglobin_g_l": (None, 89.9, 90, 120),
    "bilirubin_total_umol_l": (None, 10, 26.85, 30.6, 31.5, 31.6),
    "bilirubin_total_uln_umol_l": (None, 21, 17.9, 20.4),
    "bilirubin_direct_umol_l": (None, 5, 5.5, 6.8, 6.9),
    "bilirubin_direct_uln_umol_l": (None, 6.8, 5.5),
    "ast_u_l": (None, 30.5, 50, 61, 100, 100.1, 200, 200.1),
    "ast_uln_u_l": (None, 40, 12.2, 36.8),
    "alt_u_l": (None, 30.5, 92, 100, 100.1, 184, 200, 200.1),
    "alt_uln_u_l": (None, 40, 12.2, 36.8),
    "liver_metastases": FLAG,
    "albumin_g_l": (None, 27.9, 28, 35),
    "creatinine_umol_l": (None, 50, 88.4, 150, 300, 600),
    "creatinine_clearance_ml_min": (None, 29.9, 30, 30.1, 80),
    "aptt_s": (None, 30, 55.2, 60, 60.1),
    "aptt_uln_s": (None, 40, 36.8),
    "inr": (None, 1.0, 1.725, 1.8, 1.81),
    "inr_uln": (None, 1.2, 1.15),
    "pt_s": (None, 12, 18.3, 20.25, 20.3),
    "pt_uln_s": (None, 13.5, 12.2),
    "lvef_pct": (None, 49, 50, 62),
    "nyha_class": (None, 0, 1, 2),
    "brain_metastases": (None, "none", "treated_stable", "active"),
    "last_anticancer_half_life_days": (None, 1, 2.8, 3, 5.6, 6, 10),
    "anthracycline_doxorubicin_eq_mg_m2": (None, 0, 320, 320.5),
    "unresolved_ae_grade": GRADE,
    "peripheral_neuropathy_grade": GRADE,
    "diarrhea_grade": GRADE,
    "sbp_mmhg": (None, 120, 150, 151),
    "dbp_mmhg": (None, 80, 100, 101),
    "lvef_drop_on_anti_her2_pct": (None, 0, 9, 10, 14, 15, 20),
    "lvef_nadir_on_anti_her2_pct": (None, 45, 49.9, 50, 55),
    "qtcf_ms": (None, 450, 451, 470, 471),
    "qt_ms": (None, 400, 450, 470, 480),
    "heart_rate_bpm": (None, 60, 75, 100),
    "corticosteroid_prednisone_eq_mg_day": (None, 5, 10, 10.5),
    "weight_loss_pct_1m": (None, 2, 4.9, 5),
    "stale_columns": (None,),  # filled only by importers of dated results (no rule reads it yet)
}
for _c in schema.COLUMNS:
    if _c.kind == schema.FLAG:
        VALUES.setdefault(_c.name, FLAG)
    elif _c.name.startswith("days_since_"):
        VALUES.setdefault(_c.name, DAYS)
MISSING = sorted(set(c.name for c in schema.COLUMNS) - set(VALUES) - {"patient_id", "stale_columns"})
assert not MISSING, MISSING

# Columns that may be dropped from a random cohort (dictionary v2: a rule none of whose
# required sets is present is n/a; any other absent column reads as unknown, ULNs default).
DROPPABLE = sorted(VALUES)


def rows(min_size: int = 1, max_size: int = 25):
    """A list of patient rows (dicts) with boundary values and NULLs."""
    row = st.fixed_dictionaries({name: st.sampled_from(vals) for name, vals in VALUES.items()})
    return st.lists(row, min_size=min_size, max_size=max_size)


def cohorts(max_size: int = 25):
    """(rows, absent columns): a random cohort and the columns it lacks (a few, or most)."""
    absent = st.one_of(st.sets(st.sampled_from(DROPPABLE), max_size=4),
                       st.sets(st.sampled_from(DROPPABLE), min_size=20, max_size=len(DROPPABLE)))
    return st.tuples(rows(1, max_size), absent)


def to_csv(patients: list[dict], absent: set[str] = frozenset()) -> str:
    """CSV text of `patients` with patient_id P1.., absent columns left out."""
    cols = ["patient_id"] + [c for c in VALUES if c not in absent]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(cols)
    for i, p in enumerate(patients, 1):
        writer.writerow([f"P{i}"] + ["" if p[c] is None else _text(p[c]) for c in cols[1:]])
    return out.getvalue()


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_counter(h: fm.Histogram) -> Counter:
    """Histogram as {(fail, unknown[, site name]): n}, independent of row order."""
    out: Counter = Counter()
    for row in h.records():
        key = row[:2] if h.site is None else (*row[:2], h.sites[row[3]])
        out[key] += row[2]
    return +out


def analyst_rules(n: int = 64) -> list:
    """`n` analyst-written criteria (``CUST01``..) over the columns above, for tests of masks
    wider than 64 bits: thresholds taken from each column's own boundary values (so every
    rule fails some patients and is unknown on the NULLs), alternating directions and kinds,
    with a parameter on every third rule and a flag or text rule now and then."""
    from kn026.core.custom import CustomRule

    numeric = [c for c, vals in VALUES.items()
               if c not in ("site_id", "country", "screening_date")
               and any(v is not None for v in vals)
               and all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)]
    flags = [c for c, vals in VALUES.items() if vals == FLAG]
    out = []
    for i in range(n):
        cid = f"CUST{i + 1:02d}"
        kind = "exclusion" if i % 2 else "inclusion"
        if i % 11 == 5:
            flag = flags[i % len(flags)]
            out.append(CustomRule(cid, kind, f"No {flag}", f"NOT {flag}"))
            continue
        if i % 13 == 7:
            out.append(CustomRule(cid, kind, "Female or sex unknown", "sex = 'F' OR sex IS NULL"))
            continue
        col = numeric[(7 * i) % len(numeric)]
        values = sorted(v for v in VALUES[col] if v is not None)
        cut = values[(i // 2) % len(values)]
        op = ">=" if i % 4 < 2 else "<"
        if i % 3 == 0:
            out.append(CustomRule(cid, kind, f"{col} {op} limit", f"{col} {op} :limit",
                                  {"limit": {"default": cut, "min": -1000, "max": 100000}}))
        else:
            out.append(CustomRule(cid, kind, f"{col} {op} {cut}", f"{col} {op} {cut}"))
    return out
