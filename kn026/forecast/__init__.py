"""Layer 6: the recruitment forecast (site rates, simulation, what it needs from a screened cohort). Imports report and below."""
