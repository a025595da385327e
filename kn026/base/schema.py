"""The screening-cohort data dictionary as data.

One record per column of `cohort-dictionary.md` section 4: its kind, unit, the
range the loader accepts, and the NULL convention. The loader, the criteria
validator and the engine all read this table, so a column is described once.
"""

from __future__ import annotations

from dataclasses import dataclass

# Value kinds. "number" is DOUBLE, "integer" whole numbers, "category" a closed set
# (or open text when `values` is empty), "flag" a boolean.
ID, TEXT, DATE, NUMBER, INTEGER, FLAG, CATEGORY = (
    "id", "text", "date", "number", "integer", "flag", "category",
)

# Record-based NULL: "no such event on record" (dictionary section 1). The engine
# reads NULL as the value below so that `days_since_x < 14` is false and a dose is 0.
NEVER_DAYS = 1_000_000_000
NONE_DOSE = 0


@dataclass(frozen=True)
class Guard:
    """The dictionary's unit guard for one column (section 4, "Plausible ranges and units").

    Values outside `low`..`high`, or a column median outside `median_low`..`median_high`,
    are typical of another unit: the loader refuses them and names the likely unit and
    the fix, never converting anything itself.
    """

    low: float
    high: float
    below: str = ""  # what a value below `low` usually is, and its fix
    above: str = ""  # the same for a value above `high`
    median_low: float | None = None
    median_high: float | None = None
    median_below: str = ""
    median_above: str = ""
    # the units named above that a column can be declared in, with the factor to the
    # dictionary unit (the loader's "declare the unit" choice; kn026/ingest/units.py)
    units: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Column:
    """One dictionary column: how to parse it, what range is plausible, what NULL means."""

    name: str
    kind: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low bound excluded (creatinine, heart rate: > 0)
    values: tuple[str, ...] = ()  # closed set for categories
    record_none: float | None = None  # value NULL stands for (record-based columns)
    description: str = ""
    guard: Guard | None = None  # plausible range and median (unit guard)
    when_null: str = ""  # what NULL stands for when it is not "unknown" (ULNs, overrides)

    @property
    def record_based(self) -> bool:
        return self.record_none is not None

    @property
    def null_meaning(self) -> str:
        """What an empty cell means: none on record, a default, or unknown (section 1)."""
        if self.record_based:
            return "none on record"
        return self.when_null or "unknown"

    @property
    def sql_type(self) -> str:
        return {
            ID: "VARCHAR", TEXT: "VARCHAR", CATEGORY: "VARCHAR", DATE: "DATE",
            NUMBER: "DOUBLE", INTEGER: "INTEGER", FLAG: "BOOLEAN",
        }[self.kind]

    def range_text(self) -> str:
        """Human wording of the accepted range, for error messages."""
        if self.values:
            return "one of " + ", ".join(self.values)
        if self.low is None and self.high is None:
            return ""
        lo = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        if self.high is None:
            return lo
        return f"{lo} and <= {self.high:g}"


def _lab(name: str, unit: str, desc: str = "", guard: Guard | None = None, when_null: str = "") -> Column:
    return Column(name, NUMBER, unit, 0, None, description=desc, guard=guard, when_null=when_null)


def _uln(name: str, unit: str) -> Column:
    return Column(name, NUMBER, unit, 0, None, low_open=True, when_null="default ULN used",
                  description="upper limit of normal; absent or NULL: the default ULN")


_MAP_UNIT = "or map the column with its unit in the mapping wizard"


def _days(name: str, desc: str) -> Column:
    return Column(name, INTEGER, "days", 0, 36_500, record_none=NEVER_DAYS,
                  description=desc + " (record-based: NULL = never on record)")


def _flag(name: str, desc: str = "") -> Column:
    return Column(name, FLAG, description=desc)


def _grade(name: str, desc: str) -> Column:
    return Column(name, INTEGER, "CTCAE grade", 0, 5, description=desc)


COLUMNS: tuple[Column, ...] = (
    Column("patient_id", ID, description="unique patient identifier (required)"),
    Column("site_id", TEXT, description="screening site"),
    Column("country", TEXT, description="site country"),
    Column("screening_date", DATE, description="index date (ISO 8601)"),
    Column("age_years", NUMBER, "years", 0, 120, description="age at index"),
    Column("sex", CATEGORY, "", values=("F", "M"), description="F / M"),
    Column("weight_kg", NUMBER, "kg", 0, 500, low_open=True, description="body weight",
           guard=Guard(20, 350, below="looks like another unit or a child's weight; check the column",
                       above="looks like pounds; divide by 2.2046 " + _MAP_UNIT,
                       median_high=120,
                       median_above="is typical of pounds; divide by 2.2046 " + _MAP_UNIT,
                       units=(("lb", 0.45359237),))),
    Column("primary_site", CATEGORY, description="stomach / gej / other text"),
    Column("histology", CATEGORY, description="adenocarcinoma / other text"),
    Column("disease_extent", CATEGORY, values=(
        "locally_advanced_unresectable", "recurrent", "metastatic", "resectable")),
    Column("her2_ihc", INTEGER, "IHC score", 0, 3, description="HER2 IHC 0-3"),
    Column("her2_ish", CATEGORY, values=("positive", "negative"),
           description="HER2 ISH (NULL: not done)"),
    Column("prior_systemic_lines", INTEGER, "lines", 0, 30,
           description="systemic lines for advanced disease"),
    _flag("progressed_on_prior", "progression on or after the last line"),
    _flag("first_line_anti_her2", "trastuzumab or an analogue in line 1"),
    _flag("first_line_platinum"),
    _flag("first_line_fluoropyrimidine"),
    Column("measurable_lesions", INTEGER, "lesions", 0, 1000, description="RECIST 1.1"),
    Column("nonmeasurable_lesions", INTEGER, "lesions", 0, 1000, description="RECIST 1.1"),
    Column("ecog", INTEGER, "ECOG", 0, 5, description="ECOG performance status"),
    Column("life_expectancy_months", NUMBER, "months", 0, 1200),
    _lab("anc_1e9_l", "10^9/L", "absolute neutrophil count",
         Guard(0, 100, above="looks like cells per microlitre; divide by 1000 " + _MAP_UNIT,
               median_high=20,
               median_above="is typical of a percentage of white cells, not a count in 10^9/L; "
                            "give the absolute count",
               units=(("cells/uL", 0.001),))),
    _lab("platelets_1e9_l", "10^9/L", "platelets",
         Guard(1, 2000, below="looks like another unit; check the column",
               above="looks like platelets per microlitre; divide by 1000 " + _MAP_UNIT,
               median_low=50,
               median_below="is typical of 10^4/uL; multiply by 10 " + _MAP_UNIT,
               units=(("cells/uL", 0.001), ("10^4/uL", 10.0)))),
    _lab("hemoglobin_g_l", "g/L", "haemoglobin",
         Guard(30, 250, below="looks like g/dL (multiply by 10) or mmol/L (multiply by 16.11); "
                              "convert " + _MAP_UNIT,
               above="looks like mg/dL or another unit; check the column",
               median_low=60,
               median_below="is typical of g/dL or mmol/L, not g/L; convert " + _MAP_UNIT,
               units=(("g/dL", 10.0), ("mmol/L", 16.1)))),
    _lab("bilirubin_total_umol_l", "umol/L", "total bilirubin"),
    _uln("bilirubin_total_uln_umol_l", "umol/L"),
    _lab("bilirubin_direct_umol_l", "umol/L", "direct bilirubin"),
    _uln("bilirubin_direct_uln_umol_l", "umol/L"),
    _lab("ast_u_l", "U/L", "AST"),
    _uln("ast_uln_u_l", "U/L"),
    _lab("alt_u_l", "U/L", "ALT"),
    _uln("alt_uln_u_l", "U/L"),
    _flag("liver_metastases"),
    _lab("albumin_g_l", "g/L", "albumin",
         Guard(10, 70, below="looks like g/dL; multiply by 10 " + _MAP_UNIT,
               above="looks like another unit; check the column", units=(("g/dL", 10.0),))),
    Column("creatinine_umol_l", NUMBER, "umol/L", 0, None, low_open=True,
           description="serum creatinine",
           guard=Guard(15, 2500, below="looks like mg/dL; multiply by 88.4 " + _MAP_UNIT,
                       above="looks like another unit; check the column", units=(("mg/dL", 88.4),))),
    _lab("creatinine_clearance_ml_min", "mL/min",
         "measured or Cockcroft-Gault clearance, overrides the computed value (not an eGFR)",
         when_null="computed value used"),
    _lab("aptt_s", "s", "APTT"),
    _uln("aptt_uln_s", "s"),
    _lab("inr", "ratio", "INR"),
    _uln("inr_uln", "ratio"),
    _lab("pt_s", "s", "prothrombin time"),
    _uln("pt_uln_s", "s"),
    _days("days_since_transfusion", "last blood transfusion"),
    _days("days_since_growth_factor", "last haematopoietic cytokine"),
    Column("lvef_pct", NUMBER, "%", 0, 100, description="LVEF",
           guard=Guard(5, 95, below="looks like a fraction (0.55 for 55 %); multiply by 100 " + _MAP_UNIT,
                       above="is not a plausible ejection fraction; check the column",
                       units=(("fraction", 100.0),))),
    Column("nyha_class", INTEGER, "NYHA", 0, 4, description="0 = no heart disease"),
    _flag("childbearing_potential"),
    _flag("contraception_agreed"),
    _flag("consent_signed"),
    _flag("able_to_comply"),
    Column("brain_metastases", CATEGORY, values=("none", "treated_stable", "active")),
    _days("days_since_investigational_drug", "last investigational drug"),
    _days("days_since_anticancer_therapy", "last anti-tumour therapy"),
    Column("last_anticancer_half_life_days", NUMBER, "days", 0, 10_000, low_open=True,
           description="half-life of the last anti-tumour drug"),
    _days("days_since_antitumor_tcm", "last Chinese medicine with anti-tumour indication"),
    _days("days_since_radiotherapy", "last radiotherapy"),
    _flag("radiotherapy_toxicity_unresolved"),
    _days("days_since_major_surgery", "last major surgery"),
    _flag("major_surgery_planned"),
    Column("anthracycline_doxorubicin_eq_mg_m2", NUMBER, "mg/m2", 0, 100_000,
           record_none=NONE_DOSE,
           description="cumulative anthracycline dose (record-based: NULL = none)"),
    _flag("pregnant_or_nursing"),
    _flag("allergy_to_study_drug"),
    _grade("unresolved_ae_grade", "worst unresolved prior-therapy AE"),
    _grade("peripheral_neuropathy_grade", "peripheral neuropathy"),
    _grade("diarrhea_grade", "uncontrolled diarrhoea"),
    Column("sbp_mmhg", NUMBER, "mmHg", 0, 400, description="systolic BP"),
    Column("dbp_mmhg", NUMBER, "mmHg", 0, 300, description="diastolic BP"),
    _flag("heart_failure_history", "NYHA II-IV"),
    Column("lvef_drop_on_anti_her2_pct", NUMBER, "percentage points", -100, 100,
           description="absolute LVEF drop on anti-HER2 therapy"),
    Column("lvef_nadir_on_anti_her2_pct", NUMBER, "%", 0, 100),
    _days("days_since_myocardial_infarction", "last myocardial infarction"),
    _days("days_since_angina", "last angina"),
    _days("days_since_arrhythmia_therapy", "arrhythmia needing therapy"),
    Column("qtcf_ms", NUMBER, "ms", 0, 2000, low_open=True, when_null="computed value used",
           description="QTc by Fridericia only (not a machine QTc, usually Bazett); overrides the computed value"),
    Column("qt_ms", NUMBER, "ms", 0, 2000, low_open=True),
    Column("heart_rate_bpm", NUMBER, "beats/min", 0, 400, low_open=True),
    _flag("other_serious_cardiac_condition"),
    _flag("uncontrolled_systemic_disease"),
    _flag("active_infection_systemic_therapy"),
    Column("corticosteroid_prednisone_eq_mg_day", NUMBER, "mg/day", 0, 10_000,
           record_none=NONE_DOSE,
           description="systemic corticosteroid within 2 weeks (record-based: NULL = none)"),
    _flag("interstitial_lung_disease_history"),
    _flag("immunodeficiency_or_transplant"),
    _flag("hbv_active"),
    _flag("hcv_active"),
    _flag("hiv_positive"),
    _flag("syphilis_positive"),
    _flag("other_malignancy_5y"),
    _flag("effusion_drainage_2w"),
    Column("weight_loss_pct_1m", NUMBER, "%", 0, 100,
           description="unintentional weight loss in the month before index"),
    _flag("refuses_chemotherapy"),
    _flag("investigator_deems_unfit"),
    Column("stale_columns", TEXT, description="comma-separated columns whose only value on file is "
                                              "outside the protocol's assessment window"),
)

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}

# Measurements taken at screening (labs, vitals, ECG, LVEF, weight, performance status,
# RECIST baseline lesions): a protocol gives each an assessment window (dictionary
# section 1, "assessment" vs "event"), and importers of dated results take the latest
# value inside it. The record-based columns are the events.
ASSESSED: frozenset[str] = frozenset({
    "weight_kg", "ecog", "measurable_lesions", "nonmeasurable_lesions",
    "anc_1e9_l", "platelets_1e9_l", "hemoglobin_g_l", "bilirubin_total_umol_l",
    "bilirubin_direct_umol_l", "ast_u_l", "alt_u_l", "albumin_g_l", "creatinine_umol_l",
    "creatinine_clearance_ml_min", "aptt_s", "inr", "pt_s", "lvef_pct", "sbp_mmhg", "dbp_mmhg",
    "qtcf_ms", "qt_ms", "heart_rate_bpm",
})
# A ULN column comes from the same laboratory record as its value, so it shares the value's window.
ULN_OF: dict[str, str] = {
    "bilirubin_total_uln_umol_l": "bilirubin_total_umol_l",
    "bilirubin_direct_uln_umol_l": "bilirubin_direct_umol_l",
    "ast_uln_u_l": "ast_u_l", "alt_uln_u_l": "alt_u_l", "aptt_uln_s": "aptt_s",
    "inr_uln": "inr", "pt_uln_s": "pt_s",
}
EVENTS: frozenset[str] = frozenset(c.name for c in COLUMNS if c.record_based)

# Boolean spellings accepted in text input (dictionary section 1), lower-cased.
TRUE_WORDS = ("true", "1", "yes", "y", "t")
FALSE_WORDS = ("false", "0", "no", "n", "f")
# Sex spellings mapped to the dictionary's F / M, lower-cased.
SEX_WORDS = {"f": "F", "female": "F", "woman": "F", "w": "F",
             "m": "M", "male": "M", "man": "M"}


def column(name: str) -> Column:
    """The dictionary column `name`; KeyError names the column."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a dictionary column") from None
