"""Experiments by name (issue 11): each one file, each writing results.json first.

`python -m scenarios run <name> [--quick] [--out results/<name>]` runs one; the Markdown table
and the PNG are generated from results.json afterwards (`scenarios.experiments.report`).
"""

from scenarios.experiments.registry import EXPERIMENTS, Experiment, experiment_names, get

__all__ = ["EXPERIMENTS", "Experiment", "experiment_names", "get"]
