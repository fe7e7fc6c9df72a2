"""Evaluation: pass@k, meta-awareness metrics, plots.

Submodules are imported directly so that the light ones (pass@k, metrics, plots) never pull in torch or
transformers through the held-out evaluator.
"""
