"""State of the Cohort page: widget keys and its memoised facts and figures."""

from __future__ import annotations

from kn026.report import patients
from ui.results import ckey
from ui.session import W, engine_key, memo

DISMISS_IMPORT_ERROR = W + "dismiss_import_error"
OMOP_IMPORT = W + "omop_import"
MAP_LOAD = W + "map_load"
MAP_DOWNLOAD = W + "map_download"
CHOOSE_OMOP = W + "choose_omop"
CHOOSE_MAPPED = W + "choose_mapped"
REPORT_DOWNLOAD = W + "report_download"
REPORT_MAPPING_DOWNLOAD = W + "report_mapping_download"


def facts(ctx) -> dict:
    """Sites, countries and screening dates of the loaded cohort (kn026.report.patients.cohort_facts)."""
    return memo(("facts", engine_key(ctx.engine)), lambda: patients.cohort_facts(ctx.engine))


def distribution_figures(ctx, build):
    """The distribution figures, built once per engine, scenario, order and suppression."""
    return memo(("distribution_figures", *ckey(ctx)), build)
