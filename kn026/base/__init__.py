"""Layer 1, the bottom: the cohort dictionary as data (schema), the DuckDB table handle, mask words and SQL passes. Imports nothing else of kn026."""
