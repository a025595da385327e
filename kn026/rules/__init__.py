"""Layer 2: the allow-list checker for untrusted rule SQL and the DuckDB lockdown. Imports only kn026.base."""
