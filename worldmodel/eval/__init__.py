"""Evaluation: metrics, fidelity, drift, control, the report."""
