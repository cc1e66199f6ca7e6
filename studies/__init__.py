"""Optuna studies of the estimators' bias, variance and cost."""
