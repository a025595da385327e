"""The synthetic population's columns, categories and parameters (each number's source is in docs/synthetic-population.md)."""

from __future__ import annotations

import datetime as _dt

import pandas as pd
import pyarrow as pa

DEFAULT_START = _dt.date(2022, 9, 1)
DEFAULT_MONTHS = 36
DEFAULT_SITES = 50
BLOCK = 100_000  # rows per random stream; chunk content never depends on chunk_size
DAYS_PER_MONTH = 365.25 / 12

# SeedSequence spawn keys: independent, fixed streams.
_S_SITES, _S_PROFILES, _S_ARRIVALS, _S_PATIENTS = 0, 1, 2, 3

# ---------------------------------------------------------------------------
# Output columns, in dictionary order, with their storage kind.
# kinds: id / str / date / f8 (float64, NaN = NULL) / i16 / i64 (nullable) / bool
# ---------------------------------------------------------------------------
COLUMNS: tuple[tuple[str, str], ...] = (
    ("patient_id", "id"), ("site_id", "str"), ("country", "str"), ("screening_date", "date"),
    ("age_years", "f8"), ("sex", "str"), ("weight_kg", "f8"), ("primary_site", "str"),
    ("histology", "str"), ("disease_extent", "str"), ("her2_ihc", "i16"), ("her2_ish", "str"),
    ("prior_systemic_lines", "i16"), ("progressed_on_prior", "bool"),
    ("first_line_anti_her2", "bool"), ("first_line_platinum", "bool"),
    ("first_line_fluoropyrimidine", "bool"), ("measurable_lesions", "i16"),
    ("nonmeasurable_lesions", "i16"), ("ecog", "i16"), ("life_expectancy_months", "f8"),
    ("anc_1e9_l", "f8"), ("platelets_1e9_l", "f8"), ("hemoglobin_g_l", "f8"),
    ("bilirubin_total_umol_l", "f8"), ("bilirubin_total_uln_umol_l", "f8"),
    ("bilirubin_direct_umol_l", "f8"), ("bilirubin_direct_uln_umol_l", "f8"),
    ("ast_u_l", "f8"), ("ast_uln_u_l", "f8"), ("alt_u_l", "f8"), ("alt_uln_u_l", "f8"),
    ("liver_metastases", "bool"), ("albumin_g_l", "f8"), ("creatinine_umol_l", "f8"),
    ("creatinine_clearance_ml_min", "f8"), ("aptt_s", "f8"), ("aptt_uln_s", "f8"),
    ("inr", "f8"), ("inr_uln", "f8"), ("pt_s", "f8"), ("pt_uln_s", "f8"),
    ("days_since_transfusion", "i64"), ("days_since_growth_factor", "i64"),
    ("lvef_pct", "f8"), ("nyha_class", "i16"), ("childbearing_potential", "bool"),
    ("contraception_agreed", "bool"), ("consent_signed", "bool"), ("able_to_comply", "bool"),
    ("brain_metastases", "str"), ("days_since_investigational_drug", "i64"),
    ("days_since_anticancer_therapy", "i64"), ("last_anticancer_half_life_days", "f8"),
    ("days_since_antitumor_tcm", "i64"), ("days_since_radiotherapy", "i64"),
    ("radiotherapy_toxicity_unresolved", "bool"), ("days_since_major_surgery", "i64"),
    ("major_surgery_planned", "bool"), ("anthracycline_doxorubicin_eq_mg_m2", "f8"),
    ("pregnant_or_nursing", "bool"), ("allergy_to_study_drug", "bool"),
    ("unresolved_ae_grade", "i16"), ("peripheral_neuropathy_grade", "i16"),
    ("diarrhea_grade", "i16"), ("sbp_mmhg", "f8"), ("dbp_mmhg", "f8"),
    ("heart_failure_history", "bool"), ("lvef_drop_on_anti_her2_pct", "f8"),
    ("lvef_nadir_on_anti_her2_pct", "f8"), ("days_since_myocardial_infarction", "i64"),
    ("days_since_angina", "i64"), ("days_since_arrhythmia_therapy", "i64"),
    ("qtcf_ms", "f8"), ("qt_ms", "f8"), ("heart_rate_bpm", "f8"),
    ("other_serious_cardiac_condition", "bool"), ("uncontrolled_systemic_disease", "bool"),
    ("active_infection_systemic_therapy", "bool"),
    ("corticosteroid_prednisone_eq_mg_day", "f8"),
    ("interstitial_lung_disease_history", "bool"), ("immunodeficiency_or_transplant", "bool"),
    ("hbv_active", "bool"), ("hcv_active", "bool"), ("hiv_positive", "bool"),
    ("syphilis_positive", "bool"), ("other_malignancy_5y", "bool"),
    ("effusion_drainage_2w", "bool"), ("weight_loss_pct_1m", "f8"),
    ("refuses_chemotherapy", "bool"), ("investigator_deems_unfit", "bool"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c for c, _ in COLUMNS)

# Category spellings (dictionary section 4; "other" values are free text).
SEX = ("F", "M")
PRIMARY_SITE = ("stomach", "gej", "esophagus", "duodenum", "colorectal")
HISTOLOGY = ("adenocarcinoma", "squamous_cell_carcinoma", "neuroendocrine_carcinoma",
             "adenosquamous_carcinoma")
EXTENT = ("locally_advanced_unresectable", "recurrent", "metastatic", "resectable")
HER2_ISH = ("positive", "negative")
BRAIN = ("none", "treated_stable", "active")
REGIONS = ("china", "east_asia", "west")

_ARROW_TYPE = {"f8": pa.float64(), "i16": pa.int16(), "i64": pa.int64(), "bool": pa.bool_(),
               "str": pa.string(), "id": pa.string(), "date": pa.date32()}
SCHEMA = pa.schema([pa.field(c, _ARROW_TYPE[k]) for c, k in COLUMNS])
_PANDAS_TYPE = {pa.string(): pd.StringDtype("pyarrow"), pa.int16(): pd.Int16Dtype(),
                pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}

# ---------------------------------------------------------------------------
# Parameters. Every number is listed with its source in docs/synthetic-population.md.
# ---------------------------------------------------------------------------
# Sites: country mix (share of sites), region.
COUNTRY_MIX = (("China", 0.86, "china"), ("South Korea", 0.04, "east_asia"),
               ("United States", 0.04, "west"), ("Spain", 0.03, "west"), ("Italy", 0.03, "west"))
RATE_SHAPE = 1.5          # Gamma shape of per-site rates (CV = 1/sqrt(1.5) = 0.82)
DEFAULT_MEAN_RATE = 1.2   # referrals per site-month when n is not given
ACTIVATION_SPAN = 0.4     # sites open uniformly over the first 40 % of the window

P = {
    # demographics, by region (china, east_asia, west)
    "male": (0.75, 0.75, 0.78),
    "age_mean": (60.0, 61.0, 63.0), "age_sd": 10.4,   # normal, floored to whole years
    "weight_mean_m": (62.0, 66.0, 77.0), "weight_sd_m": (10.0, 10.0, 14.0),
    "weight_mean_f": (52.0, 55.0, 64.0), "weight_sd_f": (8.5, 8.5, 12.0),
    # tumour
    "gej": (0.17, 0.08, 0.40),
    "other_primary": 0.005,              # esophagus / duodenum / colorectal referrals
    "non_adeno": 0.006,                  # non-adenocarcinoma histology (gastric / GEJ)
    "extent": (0.05, 0.10, 0.846, 0.004),  # LA unresectable, recurrent, metastatic, resectable
    "liver_mets_if_distant": 0.48,       # among recurrent / metastatic -> ~47 % overall
    "peritoneal_if_distant": 0.235,      # -> ~22 % overall
    "brain_mets": 0.035, "brain_active_share": 1 / 3,
    # HER2 at diagnosis and at the re-test after line 1
    "her2_3plus_at_dx": 0.75,
    "her2_loss_3plus": 0.15, "her2_loss_2plus": 0.60,   # after trastuzumab
    "her2_loss_later_lines_rr": 1.0,     # relative risk of loss after >= 2 lines
    "her2_loss_no_trastuzumab": 0.05,    # HER2 confirmed at diagnosis, no anti-HER2 given
    "no_anti_her2_unconfirmed": 0.85,    # no anti-HER2 in line 1: HER2 unconfirmed at diagnosis
    "her2_pos_if_unconfirmed": 0.25,     # ... and positive on re-test
    "her2_lost_ihc": (0.35, 0.35, 0.30),  # a lost one: IHC 0, 1, 2+ with ISH negative
    # prior therapy
    "lines": (0.005, 0.85, 0.115, 0.025, 0.005),   # 0, 1, 2, 3, 4 prior lines
    "first_line_anti_her2": 0.95,
    "oxaliplatin": 0.75, "cisplatin": 0.10,
    "neuropathy_peak_oxaliplatin": (0.35, 0.45, 0.17, 0.03),  # worst grade 0-3 in line 1
    "neuropathy_peak_other": (0.88, 0.11, 0.01, 0.0),
    "neuropathy_persisting": 0.12,       # worst grade >= 2 still >= 2 at screening (else 1)
    # last dose to screening: 28 (screened early: 14) + Gamma(3, 9) days
    "days_last_dose_min": 28, "screened_early": 0.04,
    "no_measurable": 0.004, "no_measurable_peritoneal": 0.09,
    # performance status: cumulative shares ECOG 0, <=1, <=2, <=3; correlation with frailty
    "ecog_cum": (0.35, 0.875, 0.975, 0.997), "ecog_frailty_corr": 0.9,
    "life_expectancy_short_by_ecog": (0.001, 0.004, 0.10, 0.45, 0.8, 0.95),  # < 3 months
    # cardiac
    "lvef_base_mean": 64.0, "lvef_base_sd": 4.0, "lvef_big_drop": 0.007,
    # viral / traditional medicine, by region
    "hbsag": (0.085, 0.045, 0.006), "hbv_active_share": 0.12, "hbv_dna_pending": 0.05,
    "tcm_on_record": (0.15, 0.02, 0.005), "tcm_current_share": 0.10,
}

# Per-site reference ranges (upper limits of normal): (values, weights) by region.
_ULN = {
    "tbil": {"china": ((17.1, 20.5, 21.0, 22.0, 23.0, 26.0), (.2, .15, .3, .1, .1, .15)),
             "west": ((17.1, 20.5, 21.0), (.3, .5, .2))},
    "dbil": {"china": ((6.0, 6.8, 7.0, 8.0, 8.6), (.1, .5, .1, .15, .15)),
             "west": ((5.1, 6.8, 3.4), (.5, .35, .15))},
    "ast_m": {"china": ((40.0, 35.0), (.8, .2)), "west": ((40.0, 34.0, 37.0), (.5, .3, .2))},
    "alt_m": {"china": ((50.0, 40.0), (.5, .5)), "west": ((40.0, 33.0, 55.0), (.4, .3, .3))},
    "aptt": {"china": ((37.0, 38.0, 40.0, 43.5, 45.0), (.2, .15, .3, .2, .15)),
             "west": ((35.0, 36.0, 40.0), (.3, .3, .4))},
    "inr": {"china": ((1.15, 1.2, 1.25, 1.3, 1.5), (.2, .4, .1, .2, .1)),
            "west": ((1.1, 1.2, 1.3), (.3, .4, .3))},
    "pt": {"china": ((12.8, 13.0, 13.5, 14.0, 14.5, 15.0), (.1, .2, .2, .2, .15, .15)),
           "west": ((12.5, 13.5, 14.2), (.3, .4, .3))},
}

# Recording: (share of sites that never record it, per-patient missing share elsewhere).
_RECORDING = {
    "core": (0.0, 0.001),      # blood count, TBIL, AST, ALT, albumin, creatinine
    "dbil": (0.02, 0.004),
    "aptt": (0.02, 0.004),
    "inr": (0.03, 0.004),
    "pt": (0.30, 0.05),
    "qt": (0.02, 0.004),
    "vitals": (0.0, 0.002),    # weight, blood pressure, heart rate
    "lvef": (0.0, 0.004),
    "lvef_history": (0.01, 0.006),
    "weight_loss": (0.01, 0.005),
    "life_expectancy": (0.005, 0.005),
}
SITE_NO_ULN_EXPORT = 0.2       # share of sites exporting no reference ranges
SITE_QTCF_REPORTED = 0.3       # share of sites whose ECG report gives QTcF directly
SITE_CRCL_RECORDED = 0.1       # share of sites recording a measured clearance
SITE_SELECTIVITY_SD = 1.0      # site referral laxity (logit scale), see _patients
# Strength of the site's laxity on each referral problem (logit shift per unit laxity).
LAXITY = {"her2_loss": 1.1, "frailty": 0.8, "no_anti_her2": 1.0, "no_measurable": 1.0,
          "later_lines": 0.6, "not_target_disease": 1.0, "consent": 0.6, "neuropathy": 0.8,
          "timing": 0.8, "sparse": 0.8}
SPARSE_SHARE = 0.005           # patients with a sparse record
SPARSE_NULL = 0.3              # share of optional fields NULL in a sparse record
FLAG_NULL = 0.0005             # default NULL share of clinical flags
# Never NULL even in sparse records.
_DENSE = frozenset({"patient_id", "site_id", "country", "screening_date", "age_years", "sex",
                    "primary_site", "histology", "disease_extent"})
