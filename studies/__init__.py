"""Optuna studies of hypergradient estimators: bias/variance/cost, and online vs black-box tuning.

Run them with ``python -m launch.study``.
"""
