"""Layer 5: views of a screened cohort: patients, charts, small-cell suppression, exports. Imports ingest and below."""
