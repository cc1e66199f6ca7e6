"""The benchmark's results as a markdown report and PNG plots (read from the results dict)."""

from __future__ import annotations

import os

import numpy as np


def markdown(results: dict) -> str:
  """The results of :func:`studies.benchmarks.run` as markdown tables, one per suite.

  Examples:
    >>> from studies import benchmark_report
    >>> machine = {"backend": "cpu", "device": "cpu", "cpu_count": 2, "num_devices": 1,
    ...            "jax": "0.10.2"}
    >>> rows = [{"piece": "primal step", "seconds_per_step": 6e-4, "ratio": 1.0}]
    >>> print(benchmark_report.markdown({"machine": machine, "breakdown": {"rows": rows}}))
    Measured on cpu (cpu, 2 cores, 1 device(s)), jax 0.10.2.
    <BLANKLINE>
    ### Where the time goes (headline problem, per inner step)
    <BLANKLINE>
    | piece | ms per step | ratio to the primal step |
    |---|---|---|
    | primal step | 0.600 | 1.00 |
    <BLANKLINE>
    <BLANKLINE>
  """
  m = results["machine"]
  out = [f"Measured on {m['backend']} ({m['device']}, {m['cpu_count']} cores, "
         f"{m['num_devices']} device(s)), jax {m['jax']}.", ""]
  if "headline" in results:
    h = results["headline"]
    for problem in h["problems"]:
      out += [f"### Headline: {problem['problem']}, H={h['num_hyperparams']}, "
              f"num_steps={h['num_steps']}", "",
              "| estimator | ms per inner step | ratio to plain step | XLA FLOP ratio | "
              "XLA bytes ratio | ratio / FLOP ratio | compile s |", "|---|---|---|---|---|---|---|"]
      for r in h["rows"]:
        if r["num_params"] != problem["num_params"]:
          continue
        c = "" if r["compile_seconds"] is None else f"{r['compile_seconds']:.2f}"
        out.append(f"| {r['estimator']} | {1e3 * r['seconds_per_step']:.3f} | {r['ratio']:.2f} | "
                   f"{r['flop_ratio']:.2f} | {r['bytes_ratio']:.2f} | {r['over_flops']:.2f} | "
                   f"{c} |")
      out.append("")
  for suite, x in (("params", "point"), ("hyperparams", "point"), ("particles", "point"),
                   ("chains", "point"), ("online_rnn", "hidden_size")):
    if suite not in results:
      continue
    rows = results[suite]["rows"]
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    points = list(dict.fromkeys(r[x] for r in rows))
    legend = ([f"Each cell: measured ratio (XLA FLOP ratio, XLA bytes ratio; measured / FLOP "
               "ratio).", ""] if any("flop_ratio" in r for r in rows) else [])
    out += [f"### Ratio to the plain step against {results[suite].get('x', x)}", "", *legend,
            f"| {results[suite].get('x', x)} | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|"]
    for p in points:
      cells = [cell(next((r for r in rows if r[x] == p and r["estimator"] == n), None))
               for n in names]
      extra = ""
      if suite in ("params", "online_rnn"):
        extra = f" ({[r for r in rows if r[x] == p][0]['num_params']} params)"
      out.append(f"| {p}{extra} | " + " | ".join(cells) + " |")
    out.append("")
  if "online_rnn" in results:
    rows = results["online_rnn"]["rows"]
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    out += ["### Online eLSTM: µs per inner step against hidden size (window 20)", "",
            "| hidden size (weights) | plain step | " + " | ".join(names) + " |",
            "|---" * (len(names) + 2) + "|"]
    for h in dict.fromkeys(r["hidden_size"] for r in rows):
      at = [r for r in rows if r["hidden_size"] == h]
      cells = [next((f"{1e6 * r['seconds_per_step']:.1f}" for r in at if r["estimator"] == n), "")
               for n in names]
      plain = 1e6 * float(np.median([r["plain_seconds_per_step"] for r in at]))
      out.append(f"| {h} ({at[0]['num_params']}) | {plain:.1f} | " + " | ".join(cells) + " |")
    out.append("")
  if "memory" in results:
    rows = results["memory"]["rows"]
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    horizons = sorted({r["horizon"] for r in rows})
    out += ["### Peak memory (MiB, XLA buffer assignment) against the horizon T", "",
            "| estimator | " + " | ".join(f"T={t}" for t in horizons) + " | "
            + " | ".join(f"growth T×{t // horizons[0]}" for t in horizons[1:]) + " |",
            "|---" * (2 * len(horizons)) + "|"]
    for n in names:
      mem = [next(r["peak_bytes"] for r in rows if r["estimator"] == n and r["horizon"] == t)
             for t in horizons]
      out.append(f"| {n} | " + " | ".join(f"{b / 2**20:.2f}" for b in mem) + " | "
                 + " | ".join(f"{100 * (b / mem[0] - 1):+.1f}%" for b in mem[1:]) + " |")
    trade = [r for r in rows if "ratio" in r]
    if trade:
      out.append("\nfull_bptt compute ratio (remat trade): " + ", ".join(
          f"{r['estimator']} T={r['horizon']}: {r['ratio']:.2f}" for r in trade))
    out.append("")
  if "breakdown" in results:
    out += ["### Where the time goes (headline problem, per inner step)", "",
            "| piece | ms per step | ratio to the primal step |", "|---|---|---|"]
    for r in results["breakdown"]["rows"]:
      out.append(f"| {r['piece']} | {1e3 * r['seconds_per_step']:.3f} | {r['ratio']:.2f} |")
    out.append("")
  if "tuner" in results:
    out += ["### Tuner overhead per outer step, 10-D quadratic (num_steps=10)", "",
            "| estimator | ms per outer step | ms estimator compute | overhead ms | "
            "ms with one host call per step |", "|---|---|---|---|---|"]
    for r in results["tuner"]["rows"]:
      out.append(f"| {r['estimator']} | {1e3 * r['seconds_per_outer_step']:.4f} | "
                 f"{1e3 * r['compute_seconds_per_outer_step']:.4f} | "
                 f"{1e3 * r['overhead_seconds']:.4f} | "
                 f"{1e3 * r['python_loop_seconds_per_outer_step']:.4f} |")
  if "learned_optimizers" in results:
    out += learned_optimizer_table(results["learned_optimizers"])
  return "\n".join(out) + "\n"


def cell(row: dict | None) -> str:
  """A sweep's table cell: the ratio, with XLA's counts beside it where they were taken.

  Examples:
    >>> from studies import benchmark_report
    >>> benchmark_report.cell({"ratio": 3.41, "flop_ratio": 2.96, "bytes_ratio": 5.91,
    ...                        "over_flops": 1.152})
    '3.41 (2.96, 5.9; 1.15)'
  """
  if row is None:
    return ""
  if "flop_ratio" not in row:
    return f"{row['ratio']:.2f}"
  return (f"{row['ratio']:.2f} ({row['flop_ratio']:.2f}, {row['bytes_ratio']:.1f}; "
          f"{row['over_flops']:.2f})")


# learned_optimization's own times for the same rows (README, "Learned optimizers"; measured on
# this kind of 2-core machine): (optimizer, estimator, dim) -> ms per outer step.
LOPT_MS = {("learnable_sgd", "pes", 10): "2.5-2.7", ("learnable_sgd", "pes", 100_000): "199-203",
           ("learnable_sgd", "tbptt", 10): "5.0-5.1",
           ("learnable_sgd", "tbptt", 100_000): "143-146",
           ("mlp_lopt", "pes", 10): "3.75", ("mlp_lopt", "pes", 1_000): "21.1",
           ("mlp_lopt", "pes", 100_000): "~4,400", ("mlp_lopt", "tbptt", 10): "6.37",
           ("mlp_lopt", "tbptt", 1_000): "52.5", ("mlp_lopt", "tbptt", 100_000): "~7,900"}


def learned_optimizer_table(result: dict) -> list[str]:
  """The learned-optimizer suite's rows beside learned_optimization's times."""
  out = [f"### Meta-training, ms per outer step ({result['setting']}; quadratic family)", "",
         "| optimizer | estimator | dims | one step per call | inside a scanned call | "
         "first call s | learned_optimization |", "|---|---|---|---|---|---|---|"]
  for r in result["rows"]:
    key = (r["optimizer"], r["estimator"], r["dim"])
    out.append(f"| {r['optimizer']} ({r['num_weights']} weights) | {r['estimator']} | "
               f"{r['dim']:,} | {1e3 * r['seconds_per_outer_step']:.4g} | "
               f"{1e3 * r['seconds_per_outer_step_scanned']:.4g} | "
               f"{r['first_call_seconds']:.2f} | {LOPT_MS.get(key, '-')} |")
  p = result["per_particle"]
  out += ["", f"PES with the MLP optimizer on a {p['num_params']}-parameter MNIST-1D MLP "
          f"({p['num_particles']} particles, K={p['num_steps']}): "
          f"{1e3 * p['pes_seconds_per_step']:.3f} ms per inner step, "
          f"{1e3 * p['plain_seconds_per_step']:.3f} ms per plain step: "
          f"{p['ratio_per_particle']:.2f} plain steps per particle.", ""]
  return out


def plots(results: dict, output_dir: str) -> list[str]:
  """Writes one PNG per sweep suite into ``output_dir``; returns their paths.

  Examples:
    >>> import os, tempfile
    >>> from studies import benchmark_report
    >>> rows = [{"estimator": "tbptt", "horizon": t, "peak_bytes": 2**20} for t in (20, 200)]
    >>> paths = benchmark_report.plots({"memory": {"rows": rows}}, tempfile.mkdtemp())
    >>> [os.path.basename(p) for p in paths]
    ['memory.png']
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  written = []
  specs = [("params", "num_params", "parameters P", True, "ratio"),
           ("hyperparams", "point", "hyperparameters H", True, "ratio"),
           ("particles", "point", "particles", True, "ratio"),
           ("chains", "point", "chains", True, "ratio"),
           ("online_rnn", "hidden_size", "eLSTM hidden size", True, "seconds_per_step"),
           ("memory", "horizon", "horizon T", True, "peak_bytes")]
  for suite, x, xlabel, logx, y in specs:
    if suite not in results:
      continue
    rows = results[suite]["rows"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in dict.fromkeys(r["estimator"] for r in rows):
      pts = [(r[x], r[y]) for r in rows if r["estimator"] == name and y in r]
      ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel({"ratio": "ratio to plain step", "peak_bytes": "peak bytes",
                   "seconds_per_step": "seconds per inner step"}[y])
    if logx:
      ax.set_xscale("log")
    if y != "ratio":
      ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(output_dir, f"{suite}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
  return written
