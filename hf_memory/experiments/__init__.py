"""Reproducible experiments built on run_qa.py (the benchmark and the examples call these)."""

from .babilong import BabilongExperimentConfig, format_table, plot_results, run_experiment

__all__ = ["BabilongExperimentConfig", "format_table", "plot_results", "run_experiment"]
