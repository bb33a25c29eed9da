"""Reproducible performance runs of stripe-sf (see benchmarks/README.md)."""
