"""Layer 10, the top: benchmarks (`make bench`), run as `python -m kn026.bench.<name>`."""
