"""Layer 8: beyond one DuckDB: portable SQL for other databases, Spark, federated histograms of many sites."""
