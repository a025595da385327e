"""Synthetic KN026-001 screening population.

A realistic, reproducible population of patients referred for screening to the
KN026-001 trial (second-line HER2-positive gastric / GEJ adenocarcinoma): one row
per patient with every column of the data dictionary (section 4), in its units.

Model in one paragraph (numbers and sources: docs/synthetic-population.md):
sites (mostly Chinese) open over the first part of the accrual window, each with a
Gamma-distributed monthly referral rate; patients arrive as a Poisson process per
site from activation to the end of the window. Each patient has a latent frailty
that drives ECOG, anaemia, low albumin, weight loss and life expectancy together;
peritoneal disease adds ascites, effusion drainage, low albumin and weight loss;
liver metastases raise AST, ALT and bilirubin. HER2 status is the re-test used for
screening (lost after trastuzumab in a share of patients). Laboratory values are
drawn relative to each site's own reference range; sites differ in what they
record, so missing data is correlated by site, and in how selectively they refer
(a site "laxity" that raises every referral problem together, keeping marginals).

Determinism: everything derives from `seed` through `numpy.random.SeedSequence`
with fixed spawn keys (sites, site profiles, arrivals, one stream per block of
`BLOCK` patients), never the global RNG. `generate(n, seed)` and
`write(path, n, seed, chunk_size=any)` produce exactly the same rows.

Pure numpy / pandas / pyarrow; no Python loop over patients.
"""

from __future__ import annotations

import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from kn026.ingest.synth_params import (
    _DENSE,
    _PANDAS_TYPE,
    _S_PATIENTS,
    BLOCK,
    BRAIN,
    COLUMNS,
    DEFAULT_MONTHS,
    DEFAULT_SITES,
    DEFAULT_START,
    EXTENT,
    FLAG_NULL,
    HER2_ISH,
    HISTOLOGY,
    LAXITY,
    PRIMARY_SITE,
    SCHEMA,
    SEX,
    SITE_SELECTIVITY_SD,
    SPARSE_NULL,
    SPARSE_SHARE,
    P,
)
from kn026.ingest.synth_sites import _Plan, _plan, _rng


# ---------------------------------------------------------------------------
# Patients
# ---------------------------------------------------------------------------
def _cat(u: np.ndarray, probs) -> np.ndarray:
    """Categorical codes 0..len(probs)-1 from uniforms u and (unnormalised) probabilities."""
    cum = np.cumsum(np.asarray(probs, dtype=float))
    cum = cum / cum[-1]
    return np.searchsorted(cum, u, side="right").astype(np.int16).clip(0, cum.size - 1)


_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(40)
_GH_W = _GH_W / _GH_W.sum()


def _mixed_logit(p: np.ndarray, sd: float) -> np.ndarray:
    """Intercepts c with E[sigmoid(c + sd * Z)] = p for Z ~ N(0, 1) (Gauss-Hermite, Newton)."""
    p = np.clip(np.asarray(p, float), 1e-9, 1 - 1e-9)
    c = _logit(p)
    for _ in range(12):
        q = _sigmoid(c[..., None] + sd * _GH_X)
        f = (q * _GH_W).sum(-1) - p
        c = c - f / np.maximum((q * (1 - q) * _GH_W).sum(-1), 1e-12)
    return c


def _lax(p, z: np.ndarray, strength: float) -> np.ndarray:
    """Probability p shifted by site laxity z on the logit scale, keeping p as the mean."""
    sd = strength * SITE_SELECTIVITY_SD
    if np.ndim(p) == 0:
        return _sigmoid(_mixed_logit(p, sd) + strength * z)
    vals, inv = np.unique(np.asarray(p, float), return_inverse=True)
    return _sigmoid(_mixed_logit(vals, sd)[inv.reshape(np.shape(p))] + strength * z)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p):
    return np.log(p / (1.0 - p))


class _Cols:
    """Column store for one block: values and NULL masks."""

    def __init__(self, m: int):
        self.m = m
        self.values: dict[str, np.ndarray] = {}
        self.null: dict[str, np.ndarray] = {}
        self.cats: dict[str, tuple[str, ...]] = {}

    def put(self, name, values, null=None, cats=None):
        self.values[name] = values
        self.null[name] = np.zeros(self.m, bool) if null is None else np.array(null, bool)
        if cats is not None:
            self.cats[name] = cats


def _patients(plan: _Plan, b: int) -> pa.Table:
    """One block of patients: rows [b * BLOCK, (b + 1) * BLOCK) from the block's own stream."""
    lo, hi = b * BLOCK, min((b + 1) * BLOCK, plan.n)
    m = hi - lo
    rng = _rng(plan.seed, _S_PATIENTS, b)
    pr = plan.prof
    s = plan.site_idx[lo:hi].astype(np.intp)
    reg = pr.region[s]
    west = reg == 2
    C = _Cols(m)

    def u():
        return rng.random(m, dtype=np.float32)

    def bern(p):
        if np.ndim(p) == 0 and p <= 0.05:  # rare event: draw how many, then where
            out = np.zeros(m, bool)
            out[rng.integers(0, m, size=rng.binomial(m, p))] = True
            return out
        return rng.random(m, dtype=np.float32) < p

    def norm(mean=0.0, sd=1.0):
        return rng.normal(mean, sd, m)

    def unrecorded(group):
        return rng.random(m, dtype=np.float32) >= pr.record[group][s]

    def flag_null():
        return bern(FLAG_NULL)

    C.put("site_idx", s)
    C.put("screening_date", plan.day[lo:hi])

    # --- demographics -----------------------------------------------------------
    male = bern(np.take(P["male"], reg))
    female = ~male
    age = np.clip(np.floor(norm(np.take(P["age_mean"], reg), P["age_sd"])), 21, 90)
    C.put("sex", male.astype(np.int8), cats=SEX)
    C.put("age_years", age)
    # Latent frailty (tumour burden and general condition), N(0, 1). It drives ECOG and,
    # with a log-linear weight, most "sick patient" findings, so they cluster as in real
    # screening logs.
    lax = pr.selectivity[s]
    b_f = LAXITY["frailty"]
    frail = (b_f * lax + norm()) / np.sqrt(1 + (b_f * SITE_SELECTIVITY_SD) ** 2)

    def frail_p(p, k):
        """Probability with population mean p, weighted towards frail patients."""
        return np.minimum(p * np.exp(k * frail - k * k / 2), 1.0)

    # --- tumour -------------------------------------------------------------------
    a_nt = LAXITY["not_target_disease"]
    extent = _cat(u(), P["extent"][:3])
    extent = np.where(bern(_lax(P["extent"][3], lax, a_nt)), 3, extent).astype(np.int16)
    distant = (extent == 1) | (extent == 2)
    peritoneal = distant & bern(_sigmoid(_logit(P["peritoneal_if_distant"]) + 0.35 * female
                                         - 0.12 + 0.45 * frail))
    liver = distant & bern(P["liver_mets_if_distant"] + 0.03 * male)
    gej = bern(np.take(P["gej"], reg))
    site_code = np.where(gej, 1, 0).astype(np.int16)
    other = bern(_lax(P["other_primary"], lax, a_nt))
    site_code[other] = _cat(rng.random(int(other.sum())), (0.7, 0.15, 0.15)) + 2
    C.put("primary_site", site_code, cats=PRIMARY_SITE)
    na = bern(_lax(np.where(site_code == 2, 0.35, P["non_adeno"]), lax, a_nt))
    hist_code = np.zeros(m, np.int16)
    hist_code[na] = _cat(rng.random(int(na.sum())), (0.55, 0.3, 0.15)) + 1
    C.put("histology", hist_code, cats=HISTOLOGY)
    C.put("disease_extent", extent, cats=EXTENT)
    C.put("liver_metastases", liver, null=bern(0.001))
    # Active brain metastases are mostly symptomatic: weighted towards frail patients.
    p_brain = P["brain_mets"] * np.where(gej, 1.4, 0.93)
    active = bern(frail_p(P["brain_active_share"] * p_brain, 1.5))
    stable = ~active & bern(p_brain * (1 - P["brain_active_share"]))
    brain = np.where(active, 2, np.where(stable, 1, 0)).astype(np.int16)
    C.put("brain_metastases", brain, null=bern(0.002), cats=BRAIN)

    # --- performance status, life expectancy -------------------------------------------
    rho = P["ecog_frailty_corr"]
    e_lat = rho * frail + np.sqrt(1 - rho ** 2) * norm()
    ecog = np.searchsorted(_norm_q(P["ecog_cum"]), e_lat).astype(np.int16)
    C.put("ecog", ecog, null=bern(0.002))
    short = bern(np.take(P["life_expectancy_short_by_ecog"], ecog))
    le = np.where(short, np.take((1.0, 2.0), _cat(u(), (0.4, 0.6))),
                  np.take((3.0, 6.0, 12.0, 24.0), _cat(u(), (0.35, 0.45, 0.17, 0.03))))
    C.put("life_expectancy_months", le, null=unrecorded("life_expectancy"))

    # --- prior therapy --------------------------------------------------------------
    # Later lines are commoner in frailer patients (treatment burden).
    pl = P["lines"]
    later = bern(_lax(sum(pl[2:]), lax, LAXITY["later_lines"]) * np.exp(0.3 * frail - 0.045))
    lines = np.where(later, 2 + _cat(u(), pl[2:]), np.where(u() < pl[0], 0, 1)).astype(np.int16)
    treated = lines >= 1
    anti_her2 = treated & ~bern(_lax(1 - P["first_line_anti_her2"], lax, LAXITY["no_anti_her2"]))
    uplat = u()
    oxali = treated & (uplat < P["oxaliplatin"])
    cispl = treated & (uplat >= P["oxaliplatin"]) & (uplat < P["oxaliplatin"] + P["cisplatin"])
    platinum = oxali | cispl
    fp = treated & bern(np.where(platinum, 0.97, 0.97))
    progressed = np.where(treated, bern(0.995), bern(0.3))
    C.put("prior_systemic_lines", lines, null=bern(0.001))
    C.put("progressed_on_prior", progressed, null=bern(0.002))
    C.put("first_line_anti_her2", anti_her2, null=bern(0.001))
    C.put("first_line_platinum", platinum, null=bern(0.001))
    C.put("first_line_fluoropyrimidine", fp, null=bern(0.001))

    # --- HER2: diagnosis, then the re-test after line 1 (the value used for screening) ----
    dx3 = bern(P["her2_3plus_at_dx"])
    p_loss = np.where(dx3, P["her2_loss_3plus"], P["her2_loss_2plus"])
    p_loss = _lax(p_loss * np.where(lines >= 2, P["her2_loss_later_lines_rr"], 1.0), lax,
                  LAXITY["her2_loss"])
    # Without anti-HER2 in line 1, HER2 was mostly unconfirmed at diagnosis; these
    # referrals come for a re-test that is seldom positive.
    unconfirmed = ~anti_her2 & bern(P["no_anti_her2_unconfirmed"])
    p_loss = np.where(anti_her2, p_loss,
                      np.where(unconfirmed, 1 - P["her2_pos_if_unconfirmed"],
                               P["her2_loss_no_trastuzumab"]))
    lost = bern(np.minimum(p_loss, 1.0))
    ihc = np.where(dx3, np.where(bern(0.92), 3, 2), np.where(bern(0.2), 3, 2))
    ihc = np.where(lost, _cat(u(), P["her2_lost_ihc"]), ihc).astype(np.int16)
    ish = np.full(m, -1, np.int16)  # 0 positive, 1 negative, -1 not done
    ish[(ihc == 2) & ~lost] = 0
    ish[(ihc == 2) & lost] = 1
    ish[(ihc == 3) & bern(0.15)] = 0
    ish[(ihc <= 1) & bern(0.10)] = 1
    C.put("her2_ihc", ihc, null=bern(0.003))
    C.put("her2_ish", ish, null=(ish < 0) | ((ihc == 2) & bern(0.015)), cats=HER2_ISH)

    # --- lesions (peritoneal-only disease is often non-measurable) -------------------
    no_meas = bern(_lax(P["no_measurable"] + P["no_measurable_peritoneal"] * peritoneal
                        + 0.05 * (extent == 0), lax, LAXITY["no_measurable"]))
    meas = np.where(no_meas, 0, 1 + np.minimum(rng.poisson(1.4, m), 9)).astype(np.int16)
    nonmeas = rng.poisson(0.9, m) + peritoneal
    nonmeas = np.where(no_meas & (nonmeas == 0) & bern(0.85), 1, nonmeas).astype(np.int16)
    C.put("measurable_lesions", meas, null=bern(0.002))
    C.put("nonmeasurable_lesions", nonmeas, null=bern(0.01))

    # --- toxicity of prior therapy ------------------------------------------------------
    peak = np.where(oxali, _cat(u(), P["neuropathy_peak_oxaliplatin"]),
                    _cat(u(), P["neuropathy_peak_other"]))
    peak = np.where((lines >= 2) & bern(0.1), np.minimum(peak + 1, 3), peak)
    persists = bern(np.minimum(_lax(P["neuropathy_persisting"], lax, LAXITY["neuropathy"])
                               * np.exp(0.8 * frail - 0.32), 1.0))
    neuro = np.where((peak >= 2) & ~persists, 1, peak).astype(np.int16)
    other_ae = _cat(u(), (0.57, 0.425, 0.004, 0.001))
    other_ae = np.where(bern(frail_p(0.01, 1.5)), np.maximum(other_ae, 2), other_ae)
    C.put("peripheral_neuropathy_grade", neuro, null=bern(0.002))
    C.put("unresolved_ae_grade", np.maximum(neuro, other_ae).astype(np.int16), null=bern(0.002))
    diarrhea = _cat(u(), (0.92, 0.076, 0.0, 0.0))
    diarrhea = np.where(bern(frail_p(0.005, 1.0)), 2 + bern(0.2), diarrhea).astype(np.int16)
    C.put("diarrhea_grade", diarrhea, null=bern(0.002))

    # --- weight, weight loss, effusions ---------------------------------------------
    wmean = np.where(male, np.take(P["weight_mean_m"], reg), np.take(P["weight_mean_f"], reg))
    wsd = np.where(male, np.take(P["weight_sd_m"], reg), np.take(P["weight_sd_f"], reg))
    weight = np.clip(norm(wmean - 2.0 * np.maximum(frail, 0), wsd), 32, 160).round(1)
    vitals_null = unrecorded("vitals")
    C.put("weight_kg", weight, null=vitals_null)
    wl = np.maximum(norm(-1.0 + 1.9 * frail + 1.8 * peritoneal, 1.3), 0.0).round(1)
    C.put("weight_loss_pct_1m", wl, null=unrecorded("weight_loss"))
    C.put("effusion_drainage_2w", bern(np.where(peritoneal, frail_p(0.05, 1.5), 0.001)),
          null=flag_null())

    # --- blood count (anaemia with frailty, peritoneal disease and later lines) ------------
    core_null = unrecorded("core")
    hb_pre = norm(np.where(male, 125.0, 115.0) - 10.0 * frail - 4.0 * peritoneal
                  - 3.0 * (lines >= 2), 10.5)
    transfused = (hb_pre < 82) & bern(0.5)
    hb = np.where(transfused, hb_pre + rng.uniform(12, 25, m), hb_pre)
    C.put("hemoglobin_g_l", np.clip(hb, 45, 190).round(0), null=core_null)
    old_tx = ~transfused & bern(0.05 + 0.05 * (hb_pre < 95))
    d_tx = np.where(transfused, rng.integers(1, 14, m), rng.integers(14, 720, m))
    C.put("days_since_transfusion", d_tx.astype(np.int64), null=~(transfused | old_tx))
    anc_pre = np.exp(norm(np.log(4.1) + 0.06 * frail - 0.05 * oxali, 0.36))
    gcsf_recent = bern(0.001 + 0.25 * (anc_pre < 1.5))
    anc = np.where(gcsf_recent & (anc_pre < 1.5), anc_pre * rng.uniform(1.2, 3.0, m), anc_pre)
    C.put("anc_1e9_l", np.clip(anc, 0.05, 40).round(2), null=core_null)
    old_gcsf = ~gcsf_recent & bern(0.10)
    d_gcsf = np.where(gcsf_recent, rng.integers(1, 7, m), rng.integers(7, 400, m))
    C.put("days_since_growth_factor", d_gcsf.astype(np.int64), null=~(gcsf_recent | old_gcsf))
    plt_ = np.exp(norm(np.log(215) - 0.08 * oxali - 0.05 * liver, 0.29))
    C.put("platelets_1e9_l", np.clip(plt_, 5, 1500).round(0), null=core_null)

    # --- chemistry, relative to each site's reference range ---------------------------------
    uln_null = ~pr.exports_uln[s]

    def put_uln(name, values):
        C.put(name, values, null=uln_null | bern(0.005))

    tb_ratio = np.exp(norm(np.log(0.44) + 0.18 * liver + 0.06 * frail, 0.36 + 0.08 * liver))
    tb_uln = pr.uln["tbil"][s]
    C.put("bilirubin_total_umol_l", np.clip(tb_ratio * tb_uln, 1.0, 600).round(1), null=core_null)
    put_uln("bilirubin_total_uln_umol_l", tb_uln)
    db_ratio = tb_ratio * np.exp(norm(np.log(0.58) + 0.05 * liver, 0.2))
    db_uln = pr.uln["dbil"][s]
    C.put("bilirubin_direct_umol_l", np.clip(db_ratio * db_uln, 0.1, 500).round(1),
          null=unrecorded("dbil"))
    put_uln("bilirubin_direct_uln_umol_l", db_uln)
    z_liver = norm()
    sd_l = 0.34 + 0.16 * liver
    hepatitis = np.where(bern(0.004 + 0.008 * liver), rng.uniform(2.0, 5.0, m), 1.0)
    ast_r = np.exp(np.log(0.62) + 0.35 * liver + sd_l * z_liver) * hepatitis
    alt_r = np.exp(np.log(0.52) + 0.25 * liver + 0.8 * sd_l * z_liver + norm(0.0, 0.25)) * hepatitis
    ast_uln = np.where(female, pr.uln_f["ast"][s], pr.uln["ast_m"][s])
    alt_uln = np.where(female, pr.uln_f["alt"][s], pr.uln["alt_m"][s])
    C.put("ast_u_l", np.clip(ast_r * ast_uln, 5, 5000).round(0), null=core_null)
    put_uln("ast_uln_u_l", ast_uln)
    C.put("alt_u_l", np.clip(alt_r * alt_uln, 3, 5000).round(0), null=core_null)
    put_uln("alt_uln_u_l", alt_uln)
    alb = norm(39.5 - 3.0 * frail - 3.0 * peritoneal - 0.8 * liver, 3.0)
    C.put("albumin_g_l", np.clip(alb, 12, 55).round(1), null=core_null)
    creat = np.exp(norm(np.log(np.where(male, 76.0, 59.0)) + 0.05 * cispl + 0.004 * (age - 60),
                        0.18))
    creat = np.where(bern(0.006), creat * rng.uniform(1.6, 3.5, m), creat)
    creat = np.clip(creat, 20, 1500).round(0)
    C.put("creatinine_umol_l", creat, null=core_null)
    cg = (140 - age) * weight * np.where(female, 0.85, 1.0) / (72 * creat / 88.4)
    C.put("creatinine_clearance_ml_min", (cg * np.exp(norm(0.0, 0.08))).round(1),
          null=~(pr.crcl_recorded[s] & bern(0.8)))

    # --- coagulation ------------------------------------------------------------------------
    aptt_r = np.exp(norm(np.log(0.80), 0.09))
    aptt_r = np.where(bern(0.003), rng.uniform(1.3, 2.2, m), aptt_r)
    aptt_uln = pr.uln["aptt"][s]
    C.put("aptt_s", (aptt_r * aptt_uln).round(1), null=unrecorded("aptt"))
    put_uln("aptt_uln_s", aptt_uln)
    inr = np.exp(norm(0.03 * liver + 0.015 * frail, 0.07))
    inr = np.where(bern(0.004), rng.uniform(1.5, 3.2, m), inr).round(2)  # anticoagulated
    C.put("inr", inr, null=unrecorded("inr"))
    put_uln("inr_uln", pr.uln["inr"][s])
    pt = (pr.pt_normal[s] * inr ** (1.0 / pr.isi[s])).round(1)
    C.put("pt_s", pt, null=unrecorded("pt"))
    put_uln("pt_uln_s", pr.uln["pt"][s])

    # --- cardiac ------------------------------------------------------------------------------
    base = norm(P["lvef_base_mean"], P["lvef_base_sd"])
    ud = u()
    drop = np.where(ud < 0.80, np.abs(norm(0.0, 2.0)),
                    np.where(ud < 1 - P["lvef_big_drop"], rng.uniform(3, 10, m),
                             rng.uniform(10, 20, m)))
    drop = np.where(anti_her2, drop, 0.0).round(0)
    nadir = np.clip(base - drop, 20, 80).round(0)
    lvef = np.clip(base - drop * (1 - rng.uniform(0.3, 1.0, m)) + norm(-0.8, 2.0), 20, 80).round(0)
    C.put("lvef_pct", lvef, null=unrecorded("lvef"))
    no_history = ~anti_her2 | unrecorded("lvef_history")
    C.put("lvef_drop_on_anti_her2_pct", drop, null=no_history)
    C.put("lvef_nadir_on_anti_her2_pct", nadir, null=no_history | bern(0.005))
    hf = bern(0.003 + 0.03 * (lvef < 50))
    heart_disease = bern(0.06 + 0.002 * (age - 60))
    nyha = np.where(hf, _cat(u(), (0.75, 0.22, 0.03)) + 2, np.where(heart_disease, 1, 0))
    C.put("heart_failure_history", hf, null=flag_null())
    C.put("nyha_class", nyha.astype(np.int16), null=bern(0.002))
    for col, p_ev, lo_d, hi_d in (("days_since_myocardial_infarction", 0.015, 20, 3650),
                                  ("days_since_angina", 0.025, 5, 3650),
                                  ("days_since_arrhythmia_therapy", 0.010, 10, 2000)):
        ev = bern(p_ev * np.where(male, 1.2, 0.6) * np.exp(0.03 * (age - 60)))
        C.put(col, rng.integers(lo_d, hi_d, m).astype(np.int64), null=~ev)
    sbp = norm(119.0 + 0.3 * (age - 60), 11.5)
    dbp = 0.45 * sbp + norm(20.0, 7.0)
    C.put("sbp_mmhg", np.clip(sbp, 70, 240).round(0), null=vitals_null)
    C.put("dbp_mmhg", np.clip(dbp, 35, 140).round(0), null=vitals_null)
    hr = np.clip(norm(82.0 + 3.0 * frail, 12.0), 45, 150).round(0)
    qtcf = norm(np.where(male, 408.0, 418.0) + 0.2 * (age - 60), 16.0)
    qt = (qtcf * (60.0 / hr) ** (1.0 / 3.0)).round(0)
    qtcf_site = pr.qtcf_reported[s]
    qt_null = unrecorded("qt")
    C.put("qtcf_ms", (qtcf + norm(0.0, 3.0)).round(0), null=~qtcf_site | qt_null)
    C.put("qt_ms", qt, null=qt_null | (qtcf_site & bern(0.5)))
    C.put("heart_rate_bpm", hr, null=unrecorded("vitals"))
    C.put("other_serious_cardiac_condition", bern(0.002), null=flag_null())

    # --- reproduction, consent, compliance ----------------------------------------------------
    cbp = np.where(female, bern(np.where(age < 45, 0.85, np.where(age < 53, 0.4, 0.01))),
                   bern(np.where(age < 55, 0.25, 0.0)))
    C.put("childbearing_potential", cbp, null=bern(0.002))
    C.put("contraception_agreed", np.where(cbp, bern(0.985), True),
          null=np.where(cbp, bern(0.005), bern(0.7)))
    C.put("pregnant_or_nursing", female & cbp & bern(0.004), null=flag_null())
    C.put("consent_signed", ~bern(_lax(0.004, lax, LAXITY["consent"])), null=bern(0.001))
    C.put("able_to_comply", ~bern(frail_p(0.006, 1.5) + 0.02 * (age >= 80)), null=bern(0.001))

    # --- prior anti-tumour therapy: timing and washout -----------------------------------------
    # Lax sites screen sooner after the last dose (some inside the washout).
    early = bern(_lax(P["screened_early"], lax, LAXITY["timing"]))
    d_last = (np.where(early, 14, P["days_last_dose_min"])
              + np.floor(rng.gamma(3.0, 9.0, m))).astype(np.int64)
    C.put("days_since_anticancer_therapy", np.where(treated, d_last, 0),
          null=~treated | bern(0.02))
    uh = u()
    half = np.where(uh < 0.80, 28.0,  # trastuzumab continued to progression
                    np.where(lines >= 2, np.where(uh < 0.9, 14.0, 0.8),  # ramucirumab / taxane
                             np.where(uh < 0.9, 0.5, 0.03)))  # S-1 / capecitabine maintenance
    C.put("last_anticancer_half_life_days", half, null=~treated | bern(0.08))
    trial = bern(0.05)
    d_trial = np.where(bern(0.5), d_last, d_last + rng.integers(60, 700, m))
    C.put("days_since_investigational_drug", d_trial.astype(np.int64), null=~trial)
    tcm = bern(np.take(P["tcm_on_record"], reg))
    d_tcm = np.where(bern(_lax(P["tcm_current_share"], lax, LAXITY["timing"])), rng.integers(0, 14, m),
                     rng.integers(14, 400, m))
    C.put("days_since_antitumor_tcm", d_tcm.astype(np.int64), null=~tcm)
    rt = bern(0.06 + 0.4 * (brain > 0))
    d_rt = (np.floor(rng.gamma(1.5, 150.0, m)) + np.where(brain > 0, 30, 0)).astype(np.int64)
    C.put("days_since_radiotherapy", d_rt, null=~rt)
    C.put("radiotherapy_toxicity_unresolved", rt & bern(np.where(d_rt < 45, 0.05, 0.01)),
          null=bern(0.002))
    surg = bern(np.where(extent == 1, 0.85, 0.07))
    d_surg = np.where(extent == 1, rng.integers(200, 2500, m),
                      np.where(bern(0.02), rng.integers(1, 28, m), rng.integers(28, 900, m)))
    C.put("days_since_major_surgery", d_surg.astype(np.int64), null=~surg)
    C.put("major_surgery_planned", bern(0.002), null=flag_null())
    anthra = bern(np.where(west, 0.025, 0.004))
    C.put("anthracycline_doxorubicin_eq_mg_m2", np.clip(norm(290, 70), 50, 600).round(0),
          null=~anthra)
    C.put("allergy_to_study_drug", bern(0.003), null=flag_null())

    # --- comorbidity, infection, steroids -------------------------------------------------------
    C.put("uncontrolled_systemic_disease", bern(frail_p(0.008, 1.5)), null=flag_null())
    C.put("active_infection_systemic_therapy", bern(frail_p(0.008, 1.8)), null=flag_null())
    ild = bern(np.where(reg == 1, 0.006, 0.003))
    C.put("interstitial_lung_disease_history", ild, null=flag_null())
    steroid = bern(0.006 + 0.5 * (brain == 2) + 0.3 * ild)
    dose = np.where(bern(0.45), np.take((5.0, 7.5, 10.0), _cat(u(), (0.4, 0.2, 0.4))),
                    np.take((15.0, 20.0, 30.0, 40.0, 60.0), _cat(u(), (.3, .3, .2, .1, .1))))
    C.put("corticosteroid_prednisone_eq_mg_day", dose, null=~steroid)
    hiv = bern(np.where(west, 0.003, 0.0008))
    C.put("hiv_positive", hiv, null=bern(0.002))
    C.put("immunodeficiency_or_transplant", hiv | bern(0.001), null=flag_null())
    hbsag = bern(np.take(P["hbsag"], reg))
    C.put("hbv_active", hbsag & bern(P["hbv_active_share"]),
          null=(hbsag & bern(P["hbv_dna_pending"])) | bern(0.001))
    C.put("hcv_active", bern(np.where(west, 0.004, 0.002)), null=bern(0.002))
    C.put("syphilis_positive", bern(np.take((0.004, 0.003, 0.002), reg)), null=bern(0.002))
    C.put("other_malignancy_5y", bern(0.004), null=flag_null())
    C.put("refuses_chemotherapy", bern(_lax(0.004, lax, LAXITY["consent"])), null=flag_null())
    C.put("investigator_deems_unfit", bern(frail_p(0.01, 2.0)), null=flag_null())

    # --- sparse records: many optional fields unrecorded ---------------------------------------
    sparse = np.flatnonzero(bern(_lax(SPARSE_SHARE, lax, LAXITY["sparse"])))
    for name in C.null:
        if name not in _DENSE and name != "site_idx":
            C.null[name][sparse[rng.random(sparse.size) < SPARSE_NULL]] = True
    return _to_arrow(C, plan, lo)


def _norm_q(cum) -> np.ndarray:
    """Standard normal quantiles of cumulative shares (ordinal cut points)."""
    return np.array([NormalDist().inv_cdf(c) for c in cum])


def _to_arrow(C: _Cols, plan: _Plan, lo: int) -> pa.Table:
    m = C.m
    s = C.values["site_idx"]
    arrays = []
    sites = plan.sites
    for name, kind in COLUMNS:
        if name == "patient_id":
            ids = pa.array(np.arange(lo + 1, lo + m + 1, dtype=np.int64)).cast(pa.string())
            arrays.append(pc.binary_join_element_wise(
                "P", pc.utf8_lpad(ids, plan.id_width, "0"), ""))
            continue
        if name in ("site_id", "country"):
            dictionary = pa.array(sites[name].to_numpy(dtype=object), pa.string())
            arrays.append(pa.DictionaryArray.from_arrays(pa.array(s.astype(np.int32)), dictionary)
                          .dictionary_decode())
            continue
        if name == "screening_date":
            d = (np.datetime64(plan.start, "D") + C.values[name].astype("timedelta64[D]"))
            arrays.append(pa.array(d, pa.date32()))
            continue
        v, null = C.values[name], C.null[name]
        if kind == "str":
            idx = pa.array(np.asarray(v, np.int32), mask=null | (np.asarray(v) < 0))
            arrays.append(pa.DictionaryArray.from_arrays(idx, pa.array(C.cats[name]))
                          .dictionary_decode())
        elif kind == "f8":
            arrays.append(pa.array(np.asarray(v, np.float64), mask=null))
        elif kind == "i16":
            arrays.append(pa.array(np.asarray(v, np.int16), mask=null))
        elif kind == "i64":
            arrays.append(pa.array(np.asarray(v, np.int64), mask=null))
        else:
            arrays.append(pa.array(np.asarray(v, bool), mask=null))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _table(plan: _Plan, lo: int, hi: int) -> pa.Table:
    """Rows [lo, hi) of the population, built from whole deterministic blocks."""
    if hi <= lo:
        return SCHEMA.empty_table()
    blocks = [_patients(plan, b) for b in range(lo // BLOCK, (hi - 1) // BLOCK + 1)]
    t = pa.concat_tables(blocks) if len(blocks) > 1 else blocks[0]
    first = (lo // BLOCK) * BLOCK
    return t.slice(lo - first, hi - lo)


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow table of this module's schema -> DataFrame with the documented dtypes."""
    return table.to_pandas(types_mapper=_PANDAS_TYPE.get, date_as_object=False,
                           split_blocks=True)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------
def generate(n: int, seed: int, sites: int = DEFAULT_SITES, start=DEFAULT_START,
             months: int = DEFAULT_MONTHS, *, return_sites: bool = False):
    """A synthetic screening cohort of `n` patients (one row each, dictionary columns).

    Rows are in screening-date order; patient_id is "P" + a zero-padded row number
    (7 digits, more when n needs them). With `return_sites=True` the result is
    `(cohort, sites)` where `sites` is `generate_sites(sites, seed, start, months, n=n)`,
    the true per-site referral rates behind the cohort.
    """
    plan = _plan(int(n), seed, int(sites), start, int(months))
    df = to_pandas(_table(plan, 0, plan.n))
    return (df, plan.sites) if return_sites else df


def iter_tables(n: int, seed: int, sites: int = DEFAULT_SITES, start=DEFAULT_START,
                months: int = DEFAULT_MONTHS, chunk_size: int = 500_000):
    """Yield the population as Arrow tables of at most `chunk_size` rows."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    plan = _plan(int(n), seed, int(sites), start, int(months))
    for lo in range(0, plan.n, chunk_size):
        yield _table(plan, lo, min(lo + chunk_size, plan.n))


def write(path, n: int, seed: int, sites: int = DEFAULT_SITES, start=DEFAULT_START,
          months: int = DEFAULT_MONTHS, chunk_size: int = 500_000) -> Path:
    """Write the population to `path` (.csv or .parquet), `chunk_size` rows at a time.

    Memory stays bounded by one chunk (plus 6 bytes per patient for the arrival plan),
    so 10M patients fit in well under 4 GB. The rows equal `generate(n, seed, ...)`
    whatever the chunk size. CSV: header, ISO dates, true/false, empty cell = NULL.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ValueError(f"unsupported output {path.name!r}: use .csv or .parquet")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    plan = _plan(int(n), seed, int(sites), start, int(months))  # validates before writing
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")  # never leave a half-written file at `path`
    chunks = (_table(plan, lo, min(lo + chunk_size, plan.n)) for lo in range(0, plan.n, chunk_size))
    try:
        if suffix == ".csv":
            import pyarrow.csv as pcsv
            # Values are codes, numbers and dates without commas or quotes: no quoting needed.
            opts = pcsv.WriteOptions(quoting_style="none", quoting_header="none",
                                     batch_size=65_536)
            with pcsv.CSVWriter(part, SCHEMA, write_options=opts) as w:
                for t in chunks:
                    w.write_table(t)
        else:
            import pyarrow.parquet as pq
            with pq.ParquetWriter(part, SCHEMA, compression="zstd") as w:
                for t in chunks:
                    w.write_table(t, row_group_size=max(1, min(chunk_size, 1 << 20)))
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)
    return path


def bench_synth(n: int = 1_000_000, seed: int = 1) -> dict:
    """Time `generate(n, seed)`; returns seconds and rows per second (for the docs)."""
    t0 = time.perf_counter()
    df = generate(n, seed)
    dt = time.perf_counter() - t0
    return {"n": n, "seconds": round(dt, 3), "rows_per_s": round(n / dt), "columns": df.shape[1]}
