"""A study's outputs: Pareto table, CSV, PNG figures, TensorBoard hparams sessions."""

from __future__ import annotations

import csv
import json
import os
import textwrap

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


def sort_key(trial):
  """Trials in the estimator table's order, then by window, particles and chains as numbers."""
  s = trial.user_attrs.get("settings", trial.params)
  if "estimator" not in s:
    return (str(s.get("method")), trial.number)
  names = list(metaopt.ESTIMATORS)
  base = s["estimator"].split("[")[0]
  return (names.index(base) if base in names else len(names), s["estimator"],
          s.get("num_steps", 0), s.get("num_particles", 0) if "num_particles" in
          metaopt.estimator_info(s["estimator"]).takes else 0, s.get("num_chains", 1),
          trial.number)


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


def online_curves(records, path, title, *, target=None):
  """Evaluation accuracy against stream steps, one line per estimator (``launch.online_rnn``)."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for record in records:
    steps = [point[0] for point in record["curve"]]
    accuracy = [point[1] for point in record["curve"]]
    ax.plot(steps, accuracy, marker=".", label=record["estimator"])
  if target is not None:
    ax.axhline(target, color="gray", linestyle=":", linewidth=1)
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=8)
  return _save(fig, ax, path, "stream steps (one weight update per window)",
               "accuracy on a fresh stream", textwrap.fill(title, 90), fontsize=9)


def return_curves(records, path, title):
  """Episodic return against environment steps, mean and 95% CI over seeds, one line per
  (cell, estimator): colour by cell, line style by estimator (``launch.online_rl``)."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(8.5, 4.8))
  cells = list(dict.fromkeys(r["cell"] for r in records))
  specs = list(dict.fromkeys(r["estimator"] for r in records))
  styles = ["-", "--", ":", "-."]
  for record in records:
    steps = np.array([point[0] for point in record["curve"]])
    returns = np.array([point[1] for point in record["curve"]], np.float64)  # (points, seeds)
    mean = np.nanmean(returns, axis=1)
    count = np.sum(np.isfinite(returns), axis=1)
    half = (1.96 * np.nanstd(returns, axis=1, ddof=1) / np.sqrt(np.maximum(count, 1))
            if returns.shape[1] > 1 else np.zeros_like(mean))
    color = f"C{cells.index(record['cell']) % 10}"
    ax.plot(steps, mean, color=color, linestyle=styles[specs.index(record["estimator"]) % 4],
            label=f"{record['cell']} {record['estimator']}")
    ax.fill_between(steps, mean - half, mean + half, color=color, alpha=0.08)
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  return _save(fig, ax, path, "environment steps (per environment)",
               "undiscounted episodic return (mean, 95% CI over seeds)",
               textwrap.fill(title, 90), fontsize=9)


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


# Below this fraction of |exact|², a bias² or variance is zero to float precision (exact
# estimators): drawn on a marked "0 (exact)" strip, not at an arbitrary tiny value.
ZERO_FRACTION = 1e-9
ZERO_LABEL = "0 (exact)"
_MARKERS = "os^DvPX*"


def _zero_strip(ax, which, values, zero):
  """Puts the values flagged ``zero`` on a shaded strip 1.5 decades below the smallest non-zero
  value (a log axis has no 0), labelled ZERO_LABEL; returns the positions to plot."""
  values = np.asarray(values, float)
  if not zero.any():
    return values
  nonzero = values[~zero]
  at = (nonzero.min() if nonzero.size else 1.0) / 10**1.5
  if which == "y":
    ax.axhspan(at / 10**0.4, at * 10**0.4, color="0.9", zorder=0)
    ax.text(0.01, at * 10**0.25, ZERO_LABEL, transform=ax.get_yaxis_transform(), fontsize=9,
            va="bottom")
  else:
    ax.axvspan(at / 10**0.4, at * 10**0.4, color="0.9", zorder=0)
    ax.text(at * 10**0.25, 0.99, ZERO_LABEL, transform=ax.get_xaxis_transform(), fontsize=9,
            va="top", rotation=90)
  return np.where(zero, at, values)


def _encoded_scatter(ax, trials, x, y, *, xerr=None, yerr=None, front=(), zero_x=None,
                     zero_y=None):
  """One point per trial: colour = estimator, marker = window K, size = particles N, hollow =
  several chains, a black ring = Pareto front; error bars from standard errors. Returns the
  legend's handles."""
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  settings = [t.user_attrs["settings"] for t in trials]
  windows = sorted({s["num_steps"] for s in settings})
  particles = sorted({s["num_particles"] for s in settings
                      if "num_particles" in metaopt.estimator_info(s["estimator"]).takes})
  size = lambda s: (40 + 60 * particles.index(s["num_particles"]) if "num_particles" in
                    metaopt.estimator_info(s["estimator"]).takes else 40)
  ax.set_xscale("log")
  ax.set_yscale("log")
  x, y = np.asarray(x, float), np.asarray(y, float)
  if zero_x is not None:
    x = _zero_strip(ax, "x", x, zero_x)
  if zero_y is not None:
    y = _zero_strip(ax, "y", y, zero_y)
  for i, (t, s) in enumerate(zip(trials, settings)):
    est = s["estimator"].split("[")[0]
    color = COLORS.get(est, "k")
    if xerr is not None or yerr is not None:
      # A log axis has no room below zero: a lower bar longer than the value stops at 1% of it.
      bar = lambda err, v: None if err is None else [[min(err[i], 0.99 * v)], [err[i]]]
      ax.errorbar(x[i], y[i], xerr=bar(xerr, x[i]), yerr=bar(yerr, y[i]), fmt="none",
                  ecolor=color, alpha=0.5, lw=1)
    hollow = s.get("num_chains", 1) > 1
    ax.scatter(x[i], y[i], s=size(s), marker=_MARKERS[windows.index(s["num_steps"]) % 8],
               facecolors="none" if hollow else color, edgecolors=color, linewidths=1.5,
               zorder=3)
    if t.number in front:
      ax.scatter(x[i], y[i], s=size(s) * 3, marker="o", facecolors="none", edgecolors="k",
                 linewidths=1, zorder=2)
  grey = dict(color="0.4", linestyle="none")
  handles = [Line2D([], [], marker="o", color=COLORS.get(e.split("[")[0], "k"), linestyle="none",
                    label=e) for e in dict.fromkeys(s["estimator"] for s in settings)]
  handles += [Line2D([], [], marker=_MARKERS[i % 8], label=f"K = {k}", **grey)
              for i, k in enumerate(windows)]
  handles += [Line2D([], [], marker="o", markersize=np.sqrt(40 + 60 * i), label=f"N = {n}",
                     **grey) for i, n in enumerate(particles)]
  handles += [Line2D([], [], marker="o", markerfacecolor="0.4", label="1 chain", **grey),
              Line2D([], [], marker="o", markerfacecolor="none", label="several chains", **grey)]
  if front:
    handles.append(Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor="k",
                          markersize=12, linestyle="none", label="Pareto front"))
  return handles


def bias2_variance_axes(trials, front=()):
  """The bias² against variance figure (with error bars); exact zeros on their own strips."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(9, 6))
  a = [t.user_attrs for t in trials]
  scale = np.array([x["exact_norm2"] for x in a])
  bias2, variance = np.array([x["bias2"] for x in a]), np.array([x["variance"] for x in a])
  handles = _encoded_scatter(
      ax, trials, bias2, variance, xerr=[x["bias2_se"] for x in a],
      yerr=[x.get("variance_se", 0.0) for x in a], front=front,
      zero_x=bias2 <= ZERO_FRACTION * scale, zero_y=variance <= ZERO_FRACTION * scale)
  ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)
  return fig, ax


def bias_variance_figures(study, folder):
  trials = sorted(complete_trials(study), key=sort_key)
  if not trials:
    return []
  front = {t.number for t in study.best_trials}
  paths = []
  fig, ax = bias2_variance_axes(trials, front)
  paths.append(_save(
      fig, ax, os.path.join(folder, "bias2_vs_variance.png"),
      "bias² = |mean estimate − exact|² (± standard error)",
      "variance of one estimate (± standard error)",
      "bias² against variance: colour estimator, marker window K, size particles N,\n"
      f"hollow several chains, ringed Pareto front of (bias², variance, cost); {ZERO_LABEL}: "
      "zero to float precision", fontsize=10))

  plt = _plt()
  a = [t.user_attrs for t in trials]
  scale = np.array([x["exact_norm2"] for x in a])
  for name, key, err, ylabel in (
      ("variance_vs_cost.png", "variance", "variance_se", "variance of one estimate (± se)"),
      ("cost_vs_mse.png", "relative_mse", None, "relative MSE of one estimate (MSE / |exact|²)")):
    fig, ax = plt.subplots(figsize=(9, 6))
    y = np.array([x[key] for x in a])
    zero = y <= ZERO_FRACTION * (scale if key == "variance" else 1.0)
    handles = _encoded_scatter(ax, trials, [x["cost_plain_steps"] for x in a], y,
                               yerr=None if err is None else [x.get(err, 0.0) for x in a],
                               front=front, zero_y=zero)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)
    paths.append(_save(fig, ax, os.path.join(folder, name),
                       "cost per estimate (plain inner steps, median of timed repeats)", ylabel,
                       f"{key.replace('_', ' ')} against cost (the same encoding)"))
  return paths


def tuning_rows(study):
  """{(method label, budget in runs): [METRICS dict per seed]} of a tuning study's trials, and
  {method: number of diverged seeds} for the online methods.

  ``online:<e>`` rows are the restarts mode's reported (best validated) model at each budget,
  ``current:<e>`` the tuner's current theta retrained at the same budget (a diagnostic);
  ``single:<e> own`` and ``single:<e> retrain`` the single-run mode at its own cost
  (``copies`` and ``copies + 1`` runs).
  """
  from studies import tuning  # pylint: disable=g-import-not-at-top
  rows, diverged = {}, {}
  for t in complete_trials(study):
    method = t.params["method"]
    for budget, out in t.user_attrs.get("at_budget", {}).items():
      if out is not None:
        rows.setdefault((method, int(budget)), []).append(out)
    if method.startswith("online:"):
      name = method.split(":", 1)[1]
      run = t.user_attrs["run_steps"]
      current = t.user_attrs.get("current_curve")
      for budget in t.user_attrs.get("at_budget", {}) if current else ():
        # The current theta retrained, at the last diagnostic point within the budget.
        within = [c for c in current if c[0] <= int(budget) * run]
        if within:
          rows.setdefault((f"current:{name}", int(budget)), []).append(
              dict(zip(tuning.METRICS, within[-1][1:])))
      for kind in ("own", "retrain"):
        out = t.user_attrs.get(f"single_{kind}")
        if out is not None:
          rows.setdefault((f"single:{name} {kind}", int(out["runs"])), []).append(out)
      # From the current-theta curve (the retrained validation loss of the theta the tuner
      # holds), so the criterion of studies.tuning applies to studies recorded before it changed.
      curve = current or t.user_attrs["curve"]
      failed = tuning.diverged(curve[0][1], [c[1] for c in curve],
                               t.user_attrs.get("num_skipped", 0))
      diverged[method] = diverged.get(method, 0) + int(failed)
  return rows, diverged


def tuning_summary(study):
  """Medians and quartiles of the final models' test metrics per (method, budget), the goals'
  inputs: diverged runs and online curves that end above their start."""
  rows, diverged = tuning_rows(study)
  out = {"rows": [], "diverged": diverged, "ends_above_start": {}}
  for (method, budget), outs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    entry = {"method": method, "budget_runs": budget, "seeds": len(outs)}
    for k in ("test_loss", "test_accuracy", "validation_loss"):
      v = np.array([o[k] for o in outs], np.float64)
      entry[k] = {"median": float(np.median(v)), "q25": float(np.percentile(v, 25)),
                  "q75": float(np.percentile(v, 75))}
    out["rows"].append(entry)
  for t in complete_trials(study):
    method = t.params["method"]
    at = t.user_attrs.get("at_budget", {})
    if method.startswith("online:") and at:
      first, end = at[min(at, key=int)], at[max(at, key=int)]
      above = int(end["test_loss"] > first["test_loss"])
      out["ends_above_start"][method] = out["ends_above_start"].get(method, 0) + above
  return out


def tuning_goals(summary):
  """The issue's goals on this study: each a line saying met or not, with the numbers."""
  by = {(r["method"], r["budget_runs"]): r["test_loss"]["median"] for r in summary["rows"]}
  lines = []
  budgets = sorted({b for m, b in by if m == "tpe"})
  online = lambda b: {m: v for (m, bb), v in by.items() if m.startswith("online:") and bb == b}
  if 1 in budgets:
    starts = {m: by[(m, 1)] for m in sorted({m for m, _ in by}) if (m, 1) in by
              and not m.startswith(("single:", "current:", "grid"))}
    tie = max(starts.values()) - min(starts.values()) <= 1e-4 * abs(min(starts.values()))
    lines.append(f"- budget 1 run: every method's model is theta0's (median test loss "
                 f"{min(starts.values()):.4f}): {'MET' if tie else 'NOT met'}"
                 + ("" if tie else f" ({starts})"))
  for b in [b for b in budgets if b in (3, 10)]:
    cands = online(b)
    if not cands:
      continue
    best = min(cands, key=cands.get)
    rivals = {m: by[(m, b)] for m in ("tpe", "cmaes") if (m, b) in by}
    met = all(cands[best] <= v for v in rivals.values())
    lines.append(f"- budget {b} runs: best online {best} median test loss {cands[best]:.4f} vs "
                 + ", ".join(f"{m.upper() if m == 'tpe' else 'CMA-ES'} {v:.4f}"
                             for m, v in rivals.items())
                 + f": {'MET' if met else 'NOT met'}")
  total = sum(summary["diverged"].values())
  lines.append(f"- divergence: {total} diverged (method, seed) runs of online methods "
               f"{summary['diverged']}: {'MET' if total == 0 else 'NOT met'}")
  above = sum(summary.get("ends_above_start", {}).values())
  lines.append(f"- reported curves ending above their value at 1 run (theta0), (method, seed) "
               f"runs: {above} {summary.get('ends_above_start', {})}: "
               f"{'MET' if above == 0 else 'NOT met'}")
  if ("tpe", 10) in by:
    singles = {m: v for (m, bb), v in by.items() if m.startswith("single:") and m.endswith(" own")
               and bb <= 2}
    if singles:
      best = min(singles, key=singles.get)
      lines.append(f"- one single run's own model (<= 2 runs) {best} median test loss "
                   f"{singles[best]:.4f} vs TPE at 10 runs {by[('tpe', 10)]:.4f}: "
                   f"{'MET' if singles[best] <= by[('tpe', 10)] else 'NOT met'}")
  return lines


def tuning_figures(study, folder):
  plt = _plt()
  trials = complete_trials(study)
  if not trials:
    return []
  fig, ax = plt.subplots(figsize=(10.5, 5.5))
  by_method, current = {}, {}
  for t in trials:
    curve = np.asarray(t.user_attrs["curve"], np.float64)
    method = t.params["method"]
    if method.startswith("online:") and "current_curve" not in t.user_attrs:
      curve[:, 0] += t.user_attrs.get("run_steps", 0)  # older protocol: one retrain more
    if "current_curve" in t.user_attrs:
      current.setdefault(method, []).append(np.asarray(t.user_attrs["current_curve"], np.float64))
    by_method.setdefault(method, []).append(curve)
  run = max([t.user_attrs.get("run_steps", 1) for t in trials] + [1])
  # The largest budget: an online run's single-run evaluation may lie beyond it (8 runs for 8
  # particles); its curve is drawn up to the budget, the single run as a star.
  largest = max(int(b) for t in trials for b in t.user_attrs.get("at_budget", {"1": None}))
  colors = {m: f"C{i % 10}" for i, m in enumerate(sorted(by_method))}

  def steps_curve(curves, **style):
    grid = np.geomspace(run, max(max(c[-1, 0] for c in curves), run * 1.0001), 60)
    # Step interpolation: the model in force after each amount of compute (NaN before the first).
    def at(c):
      idx = np.searchsorted(c[:, 0], grid, side="right") - 1
      return np.where(idx >= 0, c[np.maximum(idx, 0), 2], np.nan)
    ys = np.array([at(c) for c in curves])
    ax.plot(grid / run, np.nanmedian(ys, 0), **style)
    return grid, ys

  for method, curves in sorted(by_method.items()):
    color = "black" if method == "grid" else colors[method]
    curves = [c[c[:, 0] <= largest * run] for c in curves]
    if method == "grid":  # one point per budget, not a trajectory
      xs = curves[0][:, 0] / run
      ys = np.array([c[:, 2] for c in curves if len(c) == len(xs)])
      ax.errorbar(xs, np.median(ys, 0), yerr=[np.median(ys, 0) - np.percentile(ys, 25, 0),
                                                np.percentile(ys, 75, 0) - np.median(ys, 0)],
                  fmt="s--", color=color, label=f"{method} ({len(ys)} seeds)", capsize=3)
      continue
    grid, ys = steps_curve(curves, label=f"{method} ({len(curves)} seeds)", color=color)
    ax.fill_between(grid / run, np.nanpercentile(ys, 25, 0), np.nanpercentile(ys, 75, 0),
                    alpha=0.15, color=color)
    if method in current:  # the tuner's current theta, retrained: a diagnostic
      steps_curve([c[c[:, 0] <= largest * run] for c in current[method]], color=color,
                  linestyle=":", linewidth=1, label=f"{method}, current theta (diagnostic)")
  rows, _ = tuning_rows(study)
  for (method, budget), outs in sorted(rows.items()):
    if method.startswith("single:") and method.endswith(" own"):
      v = [o["test_loss"] for o in outs]
      online = "online:" + method[len("single:"):-len(" own")]
      ax.plot([budget], [np.median(v)], "*", ms=12, color=colors.get(online),
              markeredgecolor="black", label=f"{method} model (median)")
  ax.set_xscale("log")
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
  return [_save(fig, ax, os.path.join(folder, "tuning_curves.png"),
                "training runs' worth of inner steps spent (every particle and validation run "
                "counted)",
                "held-out test loss of the final model",
                "each method's best validated model so far (median and IQR over seeds)\n"
                "dotted: the online tuner's current theta, retrained (a diagnostic)")]


# Each trial's end in TensorBoard's HParams table (its status column); a pruned trial ended
# early by the study's choice: a failure there, told apart by its `trial_state` column.
_STATUS = {"COMPLETE": "STATUS_SUCCESS", "FAIL": "STATUS_FAILURE", "PRUNED": "STATUS_FAILURE"}
BIAS_VARIANCE_METRICS = {
    "bias2": "squared bias of the estimator against the exact hypergradient",
    "variance": "variance of one estimate (trace, over samples)",
    "mse": "bias2 + variance", "relative_mse": "mse / |exact hypergradient|^2",
    "cost_seconds": "seconds per window (estimator, one chain)",
    "cost_plain_steps": "cost in plain inner steps per window"}


def tuning_metrics(trial, budgets):
  """A tuning trial's HParams metrics: its objective, test and validation loss and accuracy at
  each budget (its best model so far), whether it diverged and its cost."""
  from studies import tuning  # pylint: disable=g-import-not-at-top
  out = {}
  if trial.values:
    out["objective"] = float(trial.values[0])
  for b in sorted(budgets, reverse=True):  # HParams checks its first columns: the largest
    at = (trial.user_attrs.get("at_budget") or {}).get(str(b)) or {}
    for k in ("test_loss", "test_accuracy", "validation_loss"):
      if k in at:
        out[f"budget_{b}/{k}"] = float(at[k])
  if "inner_steps" in trial.user_attrs:
    out["cost/inner_steps"] = float(trial.user_attrs["inner_steps"])
  curve = trial.user_attrs.get("current_curve") or trial.user_attrs.get("curve")
  if curve and str(trial.params.get("method", "")).startswith("online:"):
    out["diverged"] = float(tuning.diverged(curve[0][1], [c[1] for c in curve],
                                            trial.user_attrs.get("num_skipped", 0)))
  return out


def tensorboard_sessions(study, folder, kind):
  """One hparams session per finished trial (complete, failed or pruned) under
  folder/trial_<nnnn> (zero-padded: sessions sort by number), with only the settings its
  estimator uses, its metrics and its status; a tuning trial's learning curve
  (``curve/<metric>`` against the budget in training runs); and the study's experiment
  (every setting's values, every metric's description) in ``folder`` itself, rewritten."""
  finished = [t for t in study.trials if t.state.name in _STATUS]
  budgets = sorted({int(b) for t in finished for b in (t.user_attrs.get("at_budget") or {})})
  settings, metrics = {}, {}
  for t in finished:
    params = dict(t.user_attrs.get("settings", t.params))
    if "estimator" in params:  # rtrl has no particles: no num_particles column for it
      takes = metaopt.estimator_info(params["estimator"]).takes
      params = {k: v for k, v in params.items()
                if k not in ("num_steps", "num_particles", "sigma") or k in takes}
    params["trial_state"] = t.state.name
    for k, v in params.items():
      settings.setdefault(k, []).append(v if isinstance(v, (bool, int, float, str)) else str(v))
    if kind == "bias_variance":
      values = {m: float(t.user_attrs[m]) for m in BIAS_VARIANCE_METRICS if m in t.user_attrs}
    else:
      values = tuning_metrics(t, budgets)
    for m in values:
      metrics.setdefault(m, BIAS_VARIANCE_METRICS.get(m) or _tuning_description(m))
    name = f"trial_{t.number:04d}"
    run = os.path.join(folder, name)
    if os.path.isdir(run):
      continue  # written by an earlier report
    with metaopt.tensorboard.SummaryWriter(run) as writer:
      writer.hparams(params, values, step=0, trial_id=name, experiment=False,
                     status=_STATUS[t.state.name])
      for b in budgets:
        at = (t.user_attrs.get("at_budget") or {}).get(str(b)) or {}
        for k in ("test_loss", "validation_loss", "test_accuracy"):
          if k in at:
            writer.scalar(f"curve/{k}", at[k], b, description=(
                f"{k.replace('_', ' ')} of the trial's best model so far; x: budget in "
                "training runs spent"))
  if not finished:
    return
  os.makedirs(folder, exist_ok=True)
  for entry in os.scandir(folder):  # the previous report's experiment: replaced
    if entry.name.startswith("events.out.tfevents.") and entry.is_file(follow_symlinks=False):
      os.remove(entry.path)
  with metaopt.tensorboard.SummaryWriter(folder) as writer:
    writer.experiment(settings, metrics)


def _tuning_description(metric):
  if metric == "objective":
    return "the value Optuna recorded: validation loss at the largest budget"
  if metric == "diverged":
    return "1 if the online tuner's retrained curve diverged (or it skipped steps)"
  if metric == "cost/inner_steps":
    return "inner steps spent (every particle and validation run counted)"
  budget, what = metric.split("/", 1)
  return (f"{what.replace('_', ' ')} of the best model so far (by validation), at a budget of "
          f"{budget.split('_', 1)[1]} training runs")


def write_report(study, kind, folder):
  """Writes every output of a finished (or partly finished) study; returns the text summary."""
  os.makedirs(folder, exist_ok=True)
  write_csv(study, os.path.join(folder, "trials.csv"))
  if kind == "bias_variance":
    figures = bias_variance_figures(study, folder)
    tensorboard_sessions(study, os.path.join(folder, "tensorboard"), kind)
    if complete_trials(study):
      text = ("Pareto front of (bias^2, variance, cost):\n\n" + pareto_table(study)
              + "\n\nAll finished trials:\n\n"
              + pareto_table(study, sorted(complete_trials(study), key=sort_key)))
    else:
      text = "no finished trials"
  else:
    figures = tuning_figures(study, folder)
    tensorboard_sessions(study, os.path.join(folder, "tensorboard"), kind)
    text = tuning_table(study)
    with open(os.path.join(folder, "summary.json"), "w") as f:
      json.dump(tuning_summary(study), f, indent=1)
  with open(os.path.join(folder, "summary.md"), "w") as f:
    f.write(text + "\n")
  return text, figures


def tuning_table(study):
  """summary.md's tables: budgets as columns (test loss), then every row with accuracy."""
  summary = tuning_summary(study)
  if not summary["rows"]:
    return "no finished trials"
  budgets = sorted({r["budget_runs"] for r in summary["rows"] if not r["method"].startswith(
      "single:")})
  by = {(r["method"], r["budget_runs"]): r for r in summary["rows"]}
  methods = sorted({m for m, _ in by if not m.startswith(("single:", "current:"))})
  cell = lambda r, k: (f"{r[k]['median']:.3f} [{r[k]['q25']:.3f}, {r[k]['q75']:.3f}]"
                       if r else "")
  header = lambda first: [f"| {first} | " + " | ".join(
      f"{b} run{'s' if b != 1 else ''}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
  table = lambda names, k: [f"| {m} | " + " | ".join(cell(by.get((m, b)), k) for b in budgets)
                            + " |" for m in names]
  lines = ["Held-out test loss of each method's best model so far (chosen by validation loss; "
           "theta0 first), median [25%, 75%] over seeds, by budget (training runs of inner "
           "steps, every particle and every validation run counted):", "",
           *header("method"), *table(methods, "test_loss")]
  current = sorted({m for m, _ in by if m.startswith("current:")})
  if current:
    lines += ["", "Diagnostic: the online tuner's current theta, retrained (not counted in the "
              "budget; what the tuner would hand on without its best-so-far):", "",
              *header("tuner"), *table(current, "test_loss")]
  lines += ["", "Single-run mode (tuned during ONE training run; at its own cost):", "",
            "| method | runs | seeds | test loss | test accuracy |", "|---|---|---|---|---|"]
  for r in summary["rows"]:
    if r["method"].startswith("single:"):
      lines.append(f"| {r['method']} | {r['budget_runs']} | {r['seeds']} | "
                   f"{cell(r, 'test_loss')} | {cell(r, 'test_accuracy')} |")
  if any(np.isfinite(r["test_accuracy"]["median"]) for r in summary["rows"]):
    lines += ["", "Test accuracy, median [25%, 75%]:", "", *header("method"),
              *table(methods, "test_accuracy")]
  lines += ["", "Goals:", ""] + tuning_goals(summary)
  return "\n".join(lines)
