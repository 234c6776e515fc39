"""Combining neighbours' states: weighted and robust rules, drift correction, secure aggregation."""
