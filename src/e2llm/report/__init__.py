"""Rendering of simulation and benchmark results: text tables, per-request CSVs, PNG plots."""
