"""Plain-Python reference implementation of the KN026-001 cohort dictionary.

Written from `cohort-dictionary.md` (sections 1-5) alone, row by row, so that it can be
diffed against the DuckDB engine. Deliberately naive: one dict per patient, one function
per rule, SQL three-valued logic spelled out with ``True`` / ``False`` / ``None``.

Conventions:

- A rule function returns ``True`` (pass: meets the requirement, for an exclusion
  criterion *not excluded*), ``False`` (fail) or ``None`` (unknown).
- Recorded values are compared with limits in exact decimal arithmetic: a float is turned
  into ``Decimal(str(x))`` (its shortest repr), so 1.8 <= 1.5 x 1.2 holds exactly.
- Derived values are compared exactly as well: Cockcroft-Gault clearance is a rational
  function of the recorded values (``fractions.Fraction``), and "QTcF <= L" is decided as
  ``qt^3 * hr <= L^3 * 60``, which is the same inequality without the cube root.
- A threshold that depends on an unknown (sex, liver metastases) is decided by evaluating
  the rule for every possible value of the unknown: all pass -> pass, all fail -> fail,
  otherwise unknown (dictionary section 2).

``read_golden`` parses the hand-checked golden CSV files in ``tests/golden``.
"""

from __future__ import annotations

import csv
import math
import numbers
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

PASS, FAIL, UNKNOWN, NA = "pass", "fail", "unknown", "n/a"
VERDICTS = (PASS, FAIL, UNKNOWN, NA)
ELIGIBLE = "ELIGIBLE"  # pseudo rule id used in golden files for the eligibility verdict
STAGES = (1, 2)

# --------------------------------------------------------------------------------------
# The dictionary as data (section 4): column -> type
# --------------------------------------------------------------------------------------

BOOL, NUM, TEXT, CATEGORY, SEX, DATE = "bool", "num", "text", "category", "sex", "date"

COLUMN_TYPES: dict[str, str] = {
    "patient_id": TEXT,
    "site_id": TEXT,
    "country": TEXT,
    "screening_date": DATE,
    "age_years": NUM,
    "sex": SEX,
    "weight_kg": NUM,
    "primary_site": CATEGORY,
    "histology": CATEGORY,
    "disease_extent": CATEGORY,
    "her2_ihc": NUM,
    "her2_ish": CATEGORY,
    "prior_systemic_lines": NUM,
    "progressed_on_prior": BOOL,
    "first_line_anti_her2": BOOL,
    "first_line_platinum": BOOL,
    "first_line_fluoropyrimidine": BOOL,
    "measurable_lesions": NUM,
    "nonmeasurable_lesions": NUM,
    "ecog": NUM,
    "life_expectancy_months": NUM,
    "anc_1e9_l": NUM,
    "platelets_1e9_l": NUM,
    "hemoglobin_g_l": NUM,
    "bilirubin_total_umol_l": NUM,
    "bilirubin_total_uln_umol_l": NUM,
    "bilirubin_direct_umol_l": NUM,
    "bilirubin_direct_uln_umol_l": NUM,
    "ast_u_l": NUM,
    "ast_uln_u_l": NUM,
    "alt_u_l": NUM,
    "alt_uln_u_l": NUM,
    "liver_metastases": BOOL,
    "albumin_g_l": NUM,
    "creatinine_umol_l": NUM,
    "creatinine_clearance_ml_min": NUM,
    "aptt_s": NUM,
    "aptt_uln_s": NUM,
    "inr": NUM,
    "inr_uln": NUM,
    "pt_s": NUM,
    "pt_uln_s": NUM,
    "days_since_transfusion": NUM,
    "days_since_growth_factor": NUM,
    "lvef_pct": NUM,
    "nyha_class": NUM,
    "childbearing_potential": BOOL,
    "contraception_agreed": BOOL,
    "consent_signed": BOOL,
    "able_to_comply": BOOL,
    "brain_metastases": CATEGORY,
    "days_since_investigational_drug": NUM,
    "days_since_anticancer_therapy": NUM,
    "last_anticancer_half_life_days": NUM,
    "days_since_antitumor_tcm": NUM,
    "days_since_radiotherapy": NUM,
    "radiotherapy_toxicity_unresolved": BOOL,
    "days_since_major_surgery": NUM,
    "major_surgery_planned": BOOL,
    "anthracycline_doxorubicin_eq_mg_m2": NUM,
    "pregnant_or_nursing": BOOL,
    "allergy_to_study_drug": BOOL,
    "unresolved_ae_grade": NUM,
    "peripheral_neuropathy_grade": NUM,
    "diarrhea_grade": NUM,
    "sbp_mmhg": NUM,
    "dbp_mmhg": NUM,
    "heart_failure_history": BOOL,
    "lvef_drop_on_anti_her2_pct": NUM,
    "lvef_nadir_on_anti_her2_pct": NUM,
    "days_since_myocardial_infarction": NUM,
    "days_since_angina": NUM,
    "days_since_arrhythmia_therapy": NUM,
    "qtcf_ms": NUM,
    "qt_ms": NUM,
    "heart_rate_bpm": NUM,
    "other_serious_cardiac_condition": BOOL,
    "uncontrolled_systemic_disease": BOOL,
    "active_infection_systemic_therapy": BOOL,
    "corticosteroid_prednisone_eq_mg_day": NUM,
    "interstitial_lung_disease_history": BOOL,
    "immunodeficiency_or_transplant": BOOL,
    "hbv_active": BOOL,
    "hcv_active": BOOL,
    "hiv_positive": BOOL,
    "syphilis_positive": BOOL,
    "other_malignancy_5y": BOOL,
    "effusion_drainage_2w": BOOL,
    "weight_loss_pct_1m": NUM,
    "refuses_chemotherapy": BOOL,
    "investigator_deems_unfit": BOOL,
    "stale_columns": TEXT,
}

# Section 1: record-based columns, where NULL (column present) means "none on record".
RECORD_BASED = frozenset(c for c in COLUMN_TYPES if c.startswith("days_since_")) | {
    "anthracycline_doxorubicin_eq_mg_m2", "corticosteroid_prednisone_eq_mg_day"}

# Section 3: default upper limits of normal, used where the *_uln* column is absent or NULL.
DEFAULT_ULN: dict[str, Decimal] = {
    "bilirubin_total_uln_umol_l": Decimal(21),
    "bilirubin_direct_uln_umol_l": Decimal("6.8"),
    "ast_uln_u_l": Decimal(40),
    "alt_uln_u_l": Decimal(40),
    "aptt_uln_s": Decimal(40),
    "inr_uln": Decimal("1.2"),
    "pt_uln_s": Decimal("13.5"),
}

# Section 4: histology values that are adenocarcinoma (the WHO subtypes included).
ADENOCARCINOMA = ("adenocarcinoma", "tubular_adenocarcinoma", "papillary_adenocarcinoma",
                  "mucinous_adenocarcinoma", "signet_ring_cell_carcinoma", "poorly_cohesive_carcinoma",
                  "mixed_adenocarcinoma")

# --------------------------------------------------------------------------------------
# Three-valued logic and exact comparisons
# --------------------------------------------------------------------------------------


def and3(*xs: bool | None) -> bool | None:
    """SQL AND: false if any side is false, else unknown if any is unknown, else true."""
    if any(x is False for x in xs):
        return False
    if any(x is None for x in xs):
        return None
    return True


def or3(*xs: bool | None) -> bool | None:
    """SQL OR: true if any side is true, else unknown if any is unknown, else false."""
    if any(x is True for x in xs):
        return True
    if any(x is None for x in xs):
        return None
    return False


def not3(x: bool | None) -> bool | None:
    return None if x is None else not x


def is_null(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def dec(v: object) -> Decimal | None:
    """A recorded number as an exact Decimal (floats via their shortest repr)."""
    if is_null(v):
        return None
    if isinstance(v, bool):
        raise TypeError(f"boolean {v!r} where a number was expected")
    if isinstance(v, Decimal):
        return v
    if isinstance(v, numbers.Integral):
        return Decimal(int(v))
    if isinstance(v, numbers.Real):
        return Decimal(str(float(v)))  # str(float) is the shortest repr
    if isinstance(v, str):
        return Decimal(v.strip())
    raise TypeError(f"not a number: {v!r}")


def truth(v: object) -> bool | None:
    """A recorded boolean (None for NULL)."""
    if is_null(v):
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, numbers.Integral) and int(v) in (0, 1):
        return bool(v)
    raise TypeError(f"not a boolean: {v!r}")


def ge(v: object, limit: Decimal | int | str) -> bool | None:
    d = dec(v)
    return None if d is None else d >= Decimal(limit)


def le(v: object, limit: Decimal | int | str) -> bool | None:
    d = dec(v)
    return None if d is None else d <= Decimal(limit)


def lt(v: object, limit: Decimal | int | str) -> bool | None:
    d = dec(v)
    return None if d is None else d < Decimal(limit)


class _Row:
    """Column access: a column absent from the table reads as NULL (section 1)."""

    def __init__(self, row: dict, columns: set[str]):
        self.row = row
        self.columns = columns

    def __getitem__(self, col: str):
        v = self.row.get(col) if col in self.columns else None
        return None if is_null(v) else v

    def uln(self, col: str) -> Decimal:
        v = dec(self[col])
        return DEFAULT_ULN[col] if v is None else v


def within_days(r: _Row, col: str, n: Decimal | int) -> bool | None:
    """Record-based `days_since_* < n`: NULL means the event never happened (false);
    an absent column is unknown (section 1: only a present column is a record)."""
    if col not in r.columns:
        return None
    d = dec(r[col])
    return False if d is None else d < Decimal(n)


def dose(r: _Row, col: str) -> Decimal | None:
    """Record-based dose: NULL means none on record, i.e. 0; an absent column is unknown."""
    if col not in r.columns:
        return None
    d = dec(r[col])
    return Decimal(0) if d is None else d


def over_possible_values(value, possible, rule) -> bool | None:
    """Decide `rule(value)`; when value is unknown, try every possible value.

    All possibilities pass -> pass; all fail -> fail; otherwise (including a possibility
    that is itself unknown) -> unknown.
    """
    if not is_null(value):
        return rule(value)
    outcomes = {rule(v) for v in possible}
    if outcomes == {True}:
        return True
    if outcomes == {False}:
        return False
    return None


def _sex(v: object) -> str | None:
    # Only F and M are defined; anything else is treated like NULL (both are tried).
    return v if v in ("F", "M") else None


# --------------------------------------------------------------------------------------
# Rules (dictionary section 5)
# --------------------------------------------------------------------------------------


def _her2(r: _Row, stage: int) -> bool | None:
    ihc = dec(r["her2_ihc"])
    ish = r["her2_ish"]
    ihc3 = None if ihc is None else ihc == 3
    ihc2 = None if ihc is None else ihc == 2
    ish_pos = None if ish is None else ish == "positive"
    return or3(ihc3, and3(ihc2, ish_pos))


def _incl03_lines(r: _Row, stage: int) -> bool | None:
    lines = dec(r["prior_systemic_lines"])
    if lines is None:
        return None
    return lines >= 1 if stage == 1 else lines == 1


def _incl03_chemo(r: _Row, stage: int) -> bool | None:
    return or3(truth(r["first_line_platinum"]), truth(r["first_line_fluoropyrimidine"]))


def _incl04(r: _Row, stage: int) -> bool | None:
    if stage == 1:
        return ge(r["measurable_lesions"], 1)
    return or3(ge(r["measurable_lesions"], 1), ge(r["nonmeasurable_lesions"], 1))


def _in(value: object, allowed: tuple) -> bool | None:
    return None if value is None else value in allowed


def _ecog(r: _Row, stage: int) -> bool | None:
    e = dec(r["ecog"])
    return None if e is None else e in (0, 1)


def _times_uln(r: _Row, value_col: str, uln_col: str, factor: str) -> bool | None:
    return le(r[value_col], Decimal(factor) * r.uln(uln_col))


def _transaminase(value_col: str, uln_col: str):
    def rule(r: _Row, stage: int) -> bool | None:
        def with_liver_mets(liver_mets: bool) -> bool | None:
            return _times_uln(r, value_col, uln_col, "5" if liver_mets else "2.5")

        return over_possible_values(
            truth(r["liver_metastases"]), (False, True), with_liver_mets
        )

    return rule


def cockcroft_gault(age, weight, sex: str, creatinine) -> Fraction | None:
    """Creatinine clearance (mL/min), exact; None if a value is NULL or creatinine <= 0."""
    a, w, c = dec(age), dec(weight), dec(creatinine)
    if a is None or w is None or c is None or c <= 0:
        return None
    factor = Fraction(85, 100) if sex == "F" else Fraction(1)
    return (
        (140 - Fraction(a)) * Fraction(w) * factor / (72 * Fraction(c) / Fraction("88.4"))
    )


def _crcl(r: _Row, stage: int) -> bool | None:
    override = r["creatinine_clearance_ml_min"]
    if override is not None:
        return ge(override, 30)

    def with_sex(sex: str) -> bool | None:
        crcl = cockcroft_gault(r["age_years"], r["weight_kg"], sex, r["creatinine_umol_l"])
        return None if crcl is None else crcl >= 30

    return over_possible_values(_sex(r["sex"]), ("F", "M"), with_sex)


QTCF_LIMIT = {"M": 450, "F": 470}


def _qtcf(r: _Row, stage: int) -> bool | None:
    override = dec(r["qtcf_ms"])
    qt, hr = dec(r["qt_ms"]), dec(r["heart_rate_bpm"])

    def with_sex(sex: str) -> bool | None:
        limit = QTCF_LIMIT[sex]
        if override is not None:
            return override <= limit
        if qt is None or hr is None or qt <= 0 or hr <= 0:
            return None
        # qt / (60/hr)^(1/3) <= L  <=>  qt^3 * hr <= L^3 * 60   (qt, hr > 0)
        return Fraction(qt) ** 3 * Fraction(hr) <= Fraction(limit) ** 3 * 60

    return over_possible_values(_sex(r["sex"]), ("F", "M"), with_sex)


def _coag(r: _Row, stage: int) -> bool | None:
    return or3(
        _times_uln(r, "inr", "inr_uln", "1.5"),
        _times_uln(r, "pt_s", "pt_uln_s", "1.5"),
    )


def _incl10(r: _Row, stage: int) -> bool | None:
    return or3(not3(truth(r["childbearing_potential"])), truth(r["contraception_agreed"]))


def _brain(r: _Row, stage: int) -> bool | None:
    b = r["brain_metastases"]
    return None if b is None else b != "active"


def _washout(half_life: object) -> Decimal:
    hl = dec(half_life)
    if hl is None:
        return Decimal(28)
    return max(Decimal(14), min(Decimal(28), 5 * hl))


def _excl03_washout(r: _Row, stage: int) -> bool | None:
    """Section 1 exception: a NULL last-therapy date is unknown unless no prior line."""
    days = dec(r["days_since_anticancer_therapy"])
    if days is None:
        lines = dec(r["prior_systemic_lines"])
        return True if lines == 0 else None
    return not days < _washout(r["last_anticancer_half_life_days"])


def _lvef_drop(r: _Row, stage: int) -> bool | None:
    drop, nadir = r["lvef_drop_on_anti_her2_pct"], r["lvef_nadir_on_anti_her2_pct"]
    return not3(or3(and3(ge(drop, 10), lt(nadir, 50)), ge(drop, 15)))


def _flag_true(col: str):
    def rule(r: _Row, stage: int) -> bool | None:
        return truth(r[col])

    return rule


def _flag_false(col: str):
    def rule(r: _Row, stage: int) -> bool | None:
        return not3(truth(r[col]))

    return rule


def _never_within(col: str, n: int):
    def rule(r: _Row, stage: int) -> bool | None:
        return not3(within_days(r, col, n))

    return rule


def _dose_at_most(col: str, limit: int):
    def rule(r: _Row, stage: int) -> bool | None:
        d = dose(r, col)
        return None if d is None else not d > limit

    return rule


def _cmp(col: str, op, limit: str):
    def rule(r: _Row, stage: int) -> bool | None:
        return op(r[col], Decimal(limit))

    return rule


# leaf id -> (requires, rule function). `requires` (section 5): the alternative sets of
# columns one of which must be present for the rule to be assessable; a dict when it
# differs by stage.
RULES: dict[str, tuple[object, object]] = {
    "INCL01": ([{"age_years"}], _cmp("age_years", ge, "18")),
    "INCL02.SITE": ([{"primary_site"}], lambda r, s: _in(r["primary_site"], ("stomach", "gej"))),
    "INCL02.HISTOLOGY": ([{"histology"}], lambda r, s: _in(r["histology"], ADENOCARCINOMA)),
    "INCL02.EXTENT": (
        [{"disease_extent"}],
        lambda r, s: _in(
            r["disease_extent"], ("locally_advanced_unresectable", "recurrent", "metastatic")
        ),
    ),
    "INCL02.HER2": ([{"her2_ihc"}], _her2),
    "INCL03.PROGRESSED": ([{"progressed_on_prior"}], _flag_true("progressed_on_prior")),
    "INCL03.ANTI_HER2": ([{"first_line_anti_her2"}], _flag_true("first_line_anti_her2")),
    "INCL03.CHEMO": ([{"first_line_platinum"}, {"first_line_fluoropyrimidine"}], _incl03_chemo),
    "INCL03.LINES": ([{"prior_systemic_lines"}], _incl03_lines),
    "INCL04": ({1: [{"measurable_lesions"}], 2: [{"measurable_lesions"}, {"nonmeasurable_lesions"}]},
               _incl04),
    "INCL05": ([{"ecog"}], _ecog),
    "INCL06": ([{"life_expectancy_months"}], _cmp("life_expectancy_months", ge, "3")),
    "INCL07.ANC": ([{"anc_1e9_l"}], _cmp("anc_1e9_l", ge, "1.5")),
    "INCL07.PLT": ([{"platelets_1e9_l"}], _cmp("platelets_1e9_l", ge, "90")),
    "INCL07.HGB": ([{"hemoglobin_g_l"}], _cmp("hemoglobin_g_l", ge, "90")),
    "INCL07.TBIL": (
        [{"bilirubin_total_umol_l"}],
        lambda r, s: _times_uln(r, "bilirubin_total_umol_l", "bilirubin_total_uln_umol_l", "1.5"),
    ),
    "INCL07.DBIL": (
        [{"bilirubin_direct_umol_l"}],
        lambda r, s: _times_uln(
            r, "bilirubin_direct_umol_l", "bilirubin_direct_uln_umol_l", "1.0"
        ),
    ),
    "INCL07.AST": ([{"ast_u_l"}], _transaminase("ast_u_l", "ast_uln_u_l")),
    "INCL07.ALT": ([{"alt_u_l"}], _transaminase("alt_u_l", "alt_uln_u_l")),
    "INCL07.ALB": ([{"albumin_g_l"}], _cmp("albumin_g_l", ge, "28")),
    "INCL07.CRCL": (
        [{"creatinine_clearance_ml_min"}, {"age_years", "weight_kg", "creatinine_umol_l"}],
        _crcl,
    ),
    "INCL07.APTT": ([{"aptt_s"}], lambda r, s: _times_uln(r, "aptt_s", "aptt_uln_s", "1.5")),
    "INCL07.COAG": ([{"inr"}, {"pt_s"}], _coag),
    "INCL07.TRANSFUSION": (
        [{"days_since_transfusion"}],
        _never_within("days_since_transfusion", 14),
    ),
    "INCL07.CYTOKINE": (
        [{"days_since_growth_factor"}],
        _never_within("days_since_growth_factor", 7),
    ),
    "INCL08": ([{"lvef_pct"}], _cmp("lvef_pct", ge, "50")),
    "INCL09": ([{"nyha_class"}], _cmp("nyha_class", le, "1")),
    "INCL10": ([{"childbearing_potential"}, {"contraception_agreed"}], _incl10),
    "INCL11": ([{"consent_signed"}], _flag_true("consent_signed")),
    "INCL12": ([{"able_to_comply"}], _flag_true("able_to_comply")),
    "EXCL01": ([{"brain_metastases"}], _brain),
    "EXCL02": (
        [{"days_since_investigational_drug"}],
        _never_within("days_since_investigational_drug", 28),
    ),
    "EXCL03.WASHOUT": ([{"days_since_anticancer_therapy"}], _excl03_washout),
    "EXCL03.TCM": ([{"days_since_antitumor_tcm"}], _never_within("days_since_antitumor_tcm", 14)),
    "EXCL04.RECENT": ([{"days_since_radiotherapy"}], _never_within("days_since_radiotherapy", 14)),
    "EXCL04.TOXICITY": (
        [{"radiotherapy_toxicity_unresolved"}],
        _flag_false("radiotherapy_toxicity_unresolved"),
    ),
    "EXCL05.RECENT": ([{"days_since_major_surgery"}], _never_within("days_since_major_surgery", 28)),
    "EXCL05.PLANNED": ([{"major_surgery_planned"}], _flag_false("major_surgery_planned")),
    "EXCL06": (
        [{"anthracycline_doxorubicin_eq_mg_m2"}],
        _dose_at_most("anthracycline_doxorubicin_eq_mg_m2", 320),
    ),
    "EXCL07": ([{"pregnant_or_nursing"}], _flag_false("pregnant_or_nursing")),
    "EXCL08": ([{"allergy_to_study_drug"}], _flag_false("allergy_to_study_drug")),
    "EXCL09.AE": ([{"unresolved_ae_grade"}], _cmp("unresolved_ae_grade", le, "1")),
    "EXCL09.NEUROPATHY": ([{"peripheral_neuropathy_grade"}], _cmp("peripheral_neuropathy_grade", le, "1")),
    "EXCL10": ([{"diarrhea_grade"}], _cmp("diarrhea_grade", lt, "2")),
    "EXCL11.SBP": ([{"sbp_mmhg"}], _cmp("sbp_mmhg", le, "150")),
    "EXCL11.DBP": ([{"dbp_mmhg"}], _cmp("dbp_mmhg", le, "100")),
    "EXCL11.HF": ([{"heart_failure_history"}], _flag_false("heart_failure_history")),
    "EXCL11.LVEF": ([{"lvef_drop_on_anti_her2_pct"}], _lvef_drop),
    "EXCL11.MI": (
        [{"days_since_myocardial_infarction"}],
        _never_within("days_since_myocardial_infarction", 183),
    ),
    "EXCL11.ANGINA": ([{"days_since_angina"}], _never_within("days_since_angina", 91)),
    "EXCL11.ARRHYTHMIA": (
        [{"days_since_arrhythmia_therapy"}],
        _never_within("days_since_arrhythmia_therapy", 183),
    ),
    "EXCL11.QTCF": ([{"qtcf_ms"}, {"qt_ms", "heart_rate_bpm"}], _qtcf),
    "EXCL11.OTHER": (
        [{"other_serious_cardiac_condition"}],
        _flag_false("other_serious_cardiac_condition"),
    ),
    "EXCL12": ([{"uncontrolled_systemic_disease"}], _flag_false("uncontrolled_systemic_disease")),
    "EXCL13": (
        [{"active_infection_systemic_therapy"}],
        _flag_false("active_infection_systemic_therapy"),
    ),
    "EXCL14": (
        [{"corticosteroid_prednisone_eq_mg_day"}],
        _dose_at_most("corticosteroid_prednisone_eq_mg_day", 10),
    ),
    "EXCL15": (
        [{"interstitial_lung_disease_history"}],
        _flag_false("interstitial_lung_disease_history"),
    ),
    "EXCL16": (
        [{"immunodeficiency_or_transplant"}],
        _flag_false("immunodeficiency_or_transplant"),
    ),
    "EXCL17.HBV": ([{"hbv_active"}], _flag_false("hbv_active")),
    "EXCL17.HCV": ([{"hcv_active"}], _flag_false("hcv_active")),
    "EXCL17.HIV": ([{"hiv_positive"}], _flag_false("hiv_positive")),
    "EXCL17.SYPHILIS": ([{"syphilis_positive"}], _flag_false("syphilis_positive")),
    "EXCL18": ([{"other_malignancy_5y"}], _flag_false("other_malignancy_5y")),
    "EXCL19": ([{"effusion_drainage_2w"}], _flag_false("effusion_drainage_2w")),
    "EXCL20": ([{"weight_loss_pct_1m"}], _cmp("weight_loss_pct_1m", lt, "5")),
    "EXCL21": ([{"refuses_chemotherapy"}], _flag_false("refuses_chemotherapy")),
    "EXCL22": ([{"investigator_deems_unfit"}], _flag_false("investigator_deems_unfit")),
}

LEAVES: list[str] = list(RULES)
CRITERIA: list[str] = list(dict.fromkeys(leaf.split(".")[0] for leaf in LEAVES))


def requires(leaf: str, stage: int) -> list[set[str]]:
    """The alternative column sets of `leaf` at `stage`, one of which must be present."""
    sets = RULES[leaf][0]
    return sets[stage] if isinstance(sets, dict) else sets


def missing_columns(leaf: str, stage: int, columns: set[str]) -> list[str]:
    """Absent columns that make `leaf` n/a ([] when one required set is present)."""
    sets = requires(leaf, stage)
    if any(s <= columns for s in sets):
        return []
    return sorted({c for s in sets for c in s} - columns)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def _verdict(x: bool | None) -> str:
    return UNKNOWN if x is None else (PASS if x else FAIL)


def evaluate_leaves(
    row: dict, stage: int, columns: set[str], params: dict | None = None
) -> dict[str, str]:
    """Every leaf rule for one patient: leaf id -> pass / fail / unknown / n/a.

    `row` maps column -> value (None for NULL). `columns` is the set of columns present
    in the cohort table. `params` (threshold overrides) is accepted and ignored.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be 1 or 2, not {stage!r}")
    columns = set(columns)
    r = _Row(row, columns)
    out: dict[str, str] = {}
    for leaf, (_sets, rule) in RULES.items():
        if missing_columns(leaf, stage, columns):
            out[leaf] = NA
        else:
            out[leaf] = _verdict(rule(r, stage))
    return out


def combine(verdicts: list[str]) -> str:
    """Section 2: fail if any assessable fails, else unknown if any unknown, else pass."""
    assessable = [v for v in verdicts if v != NA]
    if not assessable:
        return NA
    if FAIL in assessable:
        return FAIL
    if UNKNOWN in assessable:
        return UNKNOWN
    return PASS


def evaluate_criteria(leaves: dict[str, str]) -> dict[str, str]:
    """Top-level criterion verdicts from the leaf verdicts."""
    return {
        crit: combine([v for leaf, v in leaves.items() if leaf.split(".")[0] == crit])
        for crit in CRITERIA
    }


def eligible(criteria: dict[str, str]) -> str:
    """'no' if any criterion fails, 'unknown' if any is unknown, else 'yes' (n/a ignored)."""
    values = set(criteria.values())
    if FAIL in values:
        return "no"
    if UNKNOWN in values:
        return "unknown"
    return "yes"


def evaluate_all(row: dict, stage: int, columns: set[str]) -> dict[str, str]:
    """Leaves, criteria and ELIGIBLE in one dict (keys as used in the golden files)."""
    leaves = evaluate_leaves(row, stage, columns)
    criteria = evaluate_criteria(leaves)
    return {**leaves, **criteria, ELIGIBLE: eligible(criteria)}


# --------------------------------------------------------------------------------------
# Golden files
# --------------------------------------------------------------------------------------

TRUE_SPELLINGS = frozenset({"true", "1", "yes", "y", "t"})
FALSE_SPELLINGS = frozenset({"false", "0", "no", "n", "f"})
EXPECT_PREFIXES = {"expect": STAGES, "expect1": (1,), "expect2": (2,)}
EXTRA_COLUMNS = frozenset({"note"})


def parse_bool(text: str) -> bool | None:
    t = text.strip().lower()
    if t == "":
        return None
    if t in TRUE_SPELLINGS:
        return True
    if t in FALSE_SPELLINGS:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_number(text: str) -> int | float | None:
    t = text.strip()
    if t == "":
        return None
    try:
        return int(t)
    except ValueError:
        return float(t)


def parse_cell(column: str, text: str):
    kind = COLUMN_TYPES[column]
    if kind == BOOL:
        return parse_bool(text)
    if kind == NUM:
        return parse_number(text)
    t = text.strip()
    if t == "":
        return None
    if kind == SEX:
        return t.upper()
    if kind == CATEGORY:
        return t.lower()
    return t


def read_golden(path) -> tuple[list[dict], set[str], list[dict[tuple[int, str], str]]]:
    """Parse a golden CSV.

    Returns (rows, columns, expectations): rows are dicts over the dictionary columns
    present (None for NULL); columns is that set of columns; expectations[i] maps
    (stage, rule_id) -> expected verdict for row i. `expect:<ID>` applies to both stages,
    `expect1:<ID>` / `expect2:<ID>` to one. rule_id is a leaf, a criterion or ELIGIBLE
    (yes / no / unknown). Empty expectation cells are skipped; `note` is ignored.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        data_cols, expect_cols = [], []
        for name in header:
            if name in COLUMN_TYPES:
                data_cols.append(name)
            elif name in EXTRA_COLUMNS:
                continue
            elif ":" in name:
                prefix, rule_id = name.split(":", 1)
                if prefix not in EXPECT_PREFIXES:
                    raise ValueError(f"{path.name}: bad expectation prefix in {name!r}")
                if rule_id not in RULES and rule_id not in CRITERIA and rule_id != ELIGIBLE:
                    raise ValueError(f"{path.name}: unknown rule id in {name!r}")
                expect_cols.append((name, EXPECT_PREFIXES[prefix], rule_id))
            else:
                raise ValueError(f"{path.name}: column {name!r} is not in the dictionary")
        if len(set(header)) != len(header):
            raise ValueError(f"{path.name}: duplicate column")
        rows, expectations = [], []
        for line in reader:
            if None in line or None in line.values():
                raise ValueError(f"{path.name}: line {reader.line_num} has the wrong field count")
            rows.append({c: parse_cell(c, line[c] or "") for c in data_cols})
            exp: dict[tuple[int, str], str] = {}
            for name, stages, rule_id in expect_cols:
                value = (line[name] or "").strip()
                if value == "":
                    continue
                allowed = ("yes", "no", "unknown") if rule_id == ELIGIBLE else VERDICTS
                if value not in allowed:
                    raise ValueError(f"{path.name}: bad expected value {value!r} in {name}")
                for stage in stages:
                    if (stage, rule_id) in exp:
                        raise ValueError(f"{path.name}: {rule_id} stage {stage} given twice")
                    exp[(stage, rule_id)] = value
            expectations.append(exp)
    return rows, set(data_cols), expectations
