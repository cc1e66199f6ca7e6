"""A study's outputs: Pareto table, CSV, PNG figures, TensorBoard hparams sessions."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import optuna

import metaopt

# One colour per estimator, in the table's order, then the black-box methods.
COLORS = {name: f"C{i % 10}" for i, name in enumerate(metaopt.ESTIMATORS)}
COLORS.update({"tpe": "tab:brown", "random": "tab:gray"})


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def complete_trials(study):
  return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def label(trial):
  s = trial.user_attrs.get("settings", trial.params)
  if "estimator" not in s:
    return str(s.get("method"))
  text = s["estimator"]
  info = metaopt.estimator_info(text)
  if not info.whole_horizon:
    text += f" K={s['num_steps']}"
  if "num_particles" in info.takes:
    text += f" N={s['num_particles']}"
  if "sigma" in info.takes:
    text += f" sigma={s['sigma']:.2g}"
  if s.get("num_chains", 1) > 1:
    text += f" C={s['num_chains']}"
  return text


def _save(fig, ax, path, xlabel, ylabel, title, **title_kw):
  """Labels, lays out, writes and closes a figure; returns its path."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, **title_kw)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  _plt().close(fig)
  return path


def _legend_once_per_label(ax):
  handles, labels = ax.get_legend_handles_labels()
  unique = dict(zip(labels, handles))
  ax.legend(unique.values(), unique.keys(), fontsize=8)


def write_csv(study, path):
  trials = study.trials
  attr_names = sorted({k for t in trials for k, v in t.user_attrs.items()
                       if isinstance(v, (int, float, str))})
  param_names = sorted({k for t in trials for k in t.params})
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["number", "state", "values", *param_names, *attr_names])
    for t in trials:
      w.writerow([t.number, t.state.name, json.dumps(t.values),
                  *[t.params.get(k, "") for k in param_names],
                  *[t.user_attrs.get(k, "") for k in attr_names]])


def pareto_table(study, trials=None):
  """The Pareto front (bias^2, variance, cost), or the given trials, as a markdown table."""
  rows = ["| trial | estimator | bias^2 (± se) | variance (± se) | relative MSE | ms per estimate "
          "| plain steps per estimate | variance x plain steps |",
          "|---|---|---|---|---|---|---|---|"]
  if trials is None:
    trials = sorted(study.best_trials, key=lambda t: t.user_attrs["cost_seconds"])
  for t in trials:
    a = t.user_attrs
    rows.append(f"| {t.number} | {label(t)} | {a['bias2']:.3g} (± {a['bias2_se']:.2g}) | "
                f"{a['variance']:.3g} (± {a.get('variance_se', float('nan')):.2g}) | "
                f"{a['relative_mse']:.3g} | {1e3 * a['cost_seconds']:.3g} | "
                f"{a['cost_plain_steps']:.1f} | "
                f"{a['variance'] * a['cost_plain_steps']:.3g} |")
  return "\n".join(rows)


def bias_variance_figures(study, folder):
  plt = _plt()
  trials = complete_trials(study)
  if not trials:
    return []
  front = {t.number for t in study.best_trials}
  paths = []
  fig, ax = plt.subplots(figsize=(7, 5))
  tiny = 1e-12
  for t in trials:
    a = t.user_attrs
    est = a["settings"]["estimator"].split("[")[0]
    ax.scatter(max(a["bias2"], tiny), max(a["variance"], tiny), color=COLORS.get(est, "k"),
               s=60 if t.number in front else 25, edgecolors="k" if t.number in front else "none",
               label=est)
  _legend_once_per_label(ax)
  ax.set_xscale("log")
  ax.set_yscale("log")
  paths.append(_save(
      fig, ax, os.path.join(folder, "bias2_vs_variance.png"), "bias² (|mean estimate − exact|²)",
      "variance (E|d − mean d|², d = estimate − exact)",
      "bias² against variance (zeros drawn at 1e-12)\n"
      "outlined: Pareto front of (bias², variance, cost)", fontsize=10))

  fig, ax = plt.subplots(figsize=(7, 5))
  for t in trials:
    a = t.user_attrs
    est = a["settings"]["estimator"].split("[")[0]
    ax.scatter(a["cost_plain_steps"], max(a["relative_mse"], tiny), color=COLORS.get(est, "k"),
               label=est)
  _legend_once_per_label(ax)
  ax.set_xscale("log")
  ax.set_yscale("log")
  paths.append(_save(fig, ax, os.path.join(folder, "cost_vs_mse.png"),
                     "cost per estimate (plain inner steps)", "relative MSE of one estimate",
                     "cost against MSE"))

  # Variance against cost, one labelled point per estimator and option (variance x cost decides).
  fig, ax = plt.subplots(figsize=(9, 6))
  for t in trials:
    a = t.user_attrs
    est = a["settings"]["estimator"].split("[")[0]
    x, y = a["cost_plain_steps"], max(a["variance"], tiny)
    ax.errorbar(x, y, yerr=a.get("variance_se", 0), fmt="o", color=COLORS.get(est, "k"))
    ax.annotate(label(t), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
  ax.set_xscale("log")
  ax.set_yscale("log")
  paths.append(_save(fig, ax, os.path.join(folder, "variance_vs_cost.png"),
                     "cost per estimate (plain inner steps)",
                     "variance of one estimate (± standard error)", "variance against cost"))
  return paths


def tuning_figures(study, folder):
  plt = _plt()
  trials = complete_trials(study)
  if not trials:
    return []
  paths = []
  fig, ax = plt.subplots(figsize=(7, 5))
  by_method = {}
  for t in trials:
    by_method.setdefault(t.params["method"], []).append(np.asarray(t.user_attrs["curve"]))
  for method, curves in sorted(by_method.items()):
    grid = np.linspace(0, max(c[-1, 0] for c in curves), 50)
    # Step interpolation: the value in force after each amount of compute.
    ys = np.array([c[np.searchsorted(c[:, 0], grid, side="right") - 1, 1] for c in curves])
    color = COLORS.get(method.split(":")[-1], None)
    ax.plot(grid, np.median(ys, 0), label=f"{method} ({len(curves)} seeds)", color=color)
    ax.fill_between(grid, ys.min(0), ys.max(0), alpha=0.2, color=color)
  ax.set_yscale("log")
  ax.legend(fontsize=8)
  paths.append(_save(fig, ax, os.path.join(folder, "tuning_curves.png"), "inner steps spent",
                     "validation loss after one fresh horizon",
                     "online tuning against black-box search (median, min–max over seeds)"))
  return paths


def history_figure(study, folder, target=None, target_name="value"):
  plt = _plt()
  import warnings  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    ax = optuna.visualization.matplotlib.plot_optimization_history(
        study, target=target, target_name=target_name)
  path = os.path.join(folder, "optimization_history.png")
  ax.figure.set_size_inches(7, 5)
  ax.figure.tight_layout()
  ax.figure.savefig(path, dpi=100)
  plt.close(ax.figure)
  return [path]


def tensorboard_sessions(study, folder, metrics):
  """One hparams session per finished trial under folder/trial_<n>, to sort and filter trials."""
  for t in complete_trials(study):
    run = os.path.join(folder, f"trial_{t.number:04d}")
    if os.path.isdir(run):
      continue  # written by an earlier report
    writer = metaopt.SummaryWriter(run)
    params = dict(t.user_attrs.get("settings", t.params))
    values = {m: float(t.user_attrs[m]) for m in metrics if m in t.user_attrs}
    writer.hparams(params, values, step=0, trial_id=f"trial_{t.number}")
    writer.close()


def write_report(study, kind, folder):
  """Writes every output of a finished (or partly finished) study; returns the text summary."""
  os.makedirs(folder, exist_ok=True)
  write_csv(study, os.path.join(folder, "trials.csv"))
  if kind == "bias_variance":
    figures = bias_variance_figures(study, folder)
    if complete_trials(study):
      figures += history_figure(study, folder, target=lambda t: t.values[1],
                                target_name="variance")
    tensorboard_sessions(study, os.path.join(folder, "tensorboard"),
                         ["bias2", "variance", "mse", "relative_mse", "cost_seconds",
                          "cost_plain_steps"])
    if complete_trials(study):
      text = ("Pareto front of (bias^2, variance, cost):\n\n" + pareto_table(study)
              + "\n\nAll finished trials:\n\n"
              + pareto_table(study, sorted(complete_trials(study), key=label)))
    else:
      text = "no finished trials"
  else:
    figures = tuning_figures(study, folder)
    if complete_trials(study):
      figures += history_figure(study, folder, target_name="final validation loss")
    tensorboard_sessions(study, os.path.join(folder, "tensorboard"), ["inner_steps"])
    text = tuning_table(study)
  with open(os.path.join(folder, "summary.md"), "w") as f:
    f.write(text + "\n")
  return text, figures


def tuning_table(study):
  rows = ["| method | seeds | final validation loss (median) | min | max | inner steps |",
          "|---|---|---|---|---|---|"]
  by_method = {}
  for t in complete_trials(study):
    by_method.setdefault(t.params["method"], []).append(t)
  for method, ts in sorted(by_method.items()):
    v = np.array([t.value for t in ts])
    steps = int(np.median([t.user_attrs["inner_steps"] for t in ts]))
    rows.append(f"| {method} | {len(ts)} | {np.median(v):.4g} | {v.min():.4g} | {v.max():.4g} | "
                f"{steps} |")
  return "\n".join(rows)

