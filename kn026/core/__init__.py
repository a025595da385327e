"""Layer 3: the protocol (criteria, windows), scenarios, the screening engine, the funnel and analyses of its histogram. Imports base and rules."""
