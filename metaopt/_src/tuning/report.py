"""What a tuning run shows: progress text, its summary and the untuned-vs-tuned comparison."""

from __future__ import annotations

import os
import shlex
from typing import Any, Mapping

import jax
import numpy as np

from metaopt._src.core import base
from metaopt._src.files import files
from metaopt._src.tensorboard import summary
from metaopt._src.tensorboard import views
from metaopt._src.tuning.run_folder import session_hparams
from metaopt._src.tuning.run_folder import SUMMARY
from metaopt._src.tuning.run_folder import to_json


def say(verbose, line):
  if verbose:
    print(line, flush=True)


def hyper_text(hyper):
  """The hyperparameters of one outer step for a progress line: schedules at their knots."""
  points = summary.schedule_points(hyper)
  parts = [f"{k}={short(v)}" for k, v in hyper.items()
           if not k.endswith(("_curve", "_knots")) and k not in points]
  parts += [f"{k} {short(p[2])}" for k, p in points.items()]
  return ", ".join(parts)


def duration(seconds):
  seconds = int(round(seconds))
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def finish(system, theta0, state, *, evaluate, mode, validated, hyperparameters, fresh, untuned,
           run_config, wall, writer, untuned_writer, logdir, verbose):
  """The summary (and its file), the untuned-vs-tuned comparison (``fresh``, or None: none;
  ``untuned``: theta0's, if the loop computed it) and the hparams session."""
  tuned = state.best_theta if validated else state.theta
  out = {"config": run_config, "outer_steps": int(state.step),
         "num_skipped": int(state.num_skipped),
         "theta": np.asarray(base.ravel(tuned)[0]).tolist(),
         "theta_is": ("the best validated theta" if validated else
                      "where tuning ended (no validation)"),
         "last_theta": np.asarray(base.ravel(state.theta)[0]).tolist(),
         "theta_names": summary.coordinate_names(theta0),
         "hyperparameters": jax.device_get(hyperparameters(tuned)),
         "wall_seconds_this_process": wall}
  if validated:
    out["validation"] = {"best_loss": float(state.best_loss),
                         "num_validations": int(state.num_validations),
                         "num_rollbacks": int(state.num_rollbacks),
                         "step_scale": float(state.step_scale)}
    say(verbose, f"validation: best loss {float(state.best_loss):.5g} after "
         f"{int(state.num_validations)} validations ({int(state.num_rollbacks)} sent theta back); "
         f"the tuned theta is the best validated one")
  if mode == "single_run" and evaluate is not None:
    template = jax.eval_shape(system.init, jax.random.key(0), theta0)
    own = jax.device_get(jax.jit(lambda s: evaluate(one_inner_state(s.inner, template)))(
        state.estimator_state))
    out["single_run_final"] = {k: float(v) for k, v in own.items()}
    say(verbose, "the single run's own final model (chain 0): " + ", ".join(
        f"{k} {v:.4g}" for k, v in out["single_run_final"].items()))
  if fresh is not None:
    # One fresh horizon per theta on the same keys: the difference is the tuning's alone.
    say(verbose, "training one fresh horizon with the initial and with the tuned theta "
         "(same keys) ...")
    as_floats = lambda th: {k: float(v) for k, v in jax.device_get(fresh(th)).items()}
    out["untuned"] = dict(untuned) if untuned else as_floats(theta0)
    out["tuned"] = as_floats(tuned)
    if verbose:
      print_comparison(out["untuned"], out["tuned"], hyperparameters(theta0),
                       hyperparameters(tuned))
  if writer is not None:
    hyper_tuned = jax.device_get(hyperparameters(tuned))
    summary.log_schedule_curves(writer, jax.device_get(hyperparameters(theta0)), hyper_tuned,
                                untuned_writer=untuned_writer)
    # HParams: both sides of the comparison and the tuned values, one column each.
    compared = views.shown_metrics(out["untuned"]) if "untuned" in out else []
    metrics = {f"final/{which}/{k}": out[which][k] for k in compared
               for which in ("tuned", "untuned")}
    metrics.update({f"final/single_run_{k}": v for k, v in out.get("single_run_final", {}).items()})
    metrics.update({f"final/hyperparameters/{k}": v
                    for k, v in summary.shown_values(hyper_tuned).items()})
    metrics["final/num_skipped"] = float(state.num_skipped)
    if validated:
      metrics["final/best_validation_loss"] = float(state.best_loss)
    writer.hparams(session_hparams(run_config), metrics, int(state.step),
                   trial_id=os.path.basename(os.path.abspath(logdir)), status="STATUS_SUCCESS")
    writer.close()
    untuned_writer.close()
    files.write_atomic(os.path.join(logdir, SUMMARY), to_json(out))
    say(verbose, f"\nsummary: {os.path.join(logdir, SUMMARY)}\n"
         "TensorBoard: tensorboard --samples_per_plugin=images=100 --logdir "
         f"{shlex.quote(logdir)}")
  return tuned, out


def one_inner_state(inner, template):
  """Chain 0's inner state (particle 0's where the estimator stacks one per particle): leading
  axes are dropped down to the rank a fresh ``system.init`` state has."""
  return jax.tree.map(lambda x, like: x[(0,) * (x.ndim - len(like.shape))], inner, template)


def short(v):
  v = np.asarray(v)
  return f"{float(v):.4g}" if v.ndim == 0 else "[" + " ".join(f"{x:.3g}" for x in v.ravel()) + "]"


def print_comparison(untuned: Mapping[str, float], tuned: Mapping[str, float],
                     hyper0: Mapping[str, Any], hyper: Mapping[str, Any]) -> None:
  """Prints the untuned-vs-tuned table and each hyperparameter before and after (a schedule at
  its knots, where its extremes are)."""
  print("\none horizon of inner training, same keys:")
  print(f"{'':24s}{'untuned':>14s}{'tuned':>14s}")
  for k in untuned:
    print(f"{k:24s}{untuned[k]:14.5g}{tuned[k]:14.5g}")
  points0, points = summary.schedule_points(hyper0), summary.schedule_points(hyper)
  for k in hyper:
    if k in points:
      labels, steps, at = points[k]
      what = "knots" if labels[0].startswith("knot") else "points"
      print(f"{k.replace('_', '-')} schedule at its {what}, inner steps "
            f"{[int(round(x)) for x in steps]}:")
      print(f"  untuned {short(points0[k][2])}\n  tuned   {short(at)}")
    elif not k.endswith(("_curve", "_knots")):
      print(f"{k}: untuned {short(hyper0[k])}, tuned {short(hyper[k])}")


def natural(hyperparameters, unravel, theta0):
  """``hyperparameters`` of a stack of flat thetas: jitted and vmapped when it traces; called on
  host values, one theta at a time, when it converts its input with numpy (a display function
  may: it only ever sees values)."""
  try:
    jax.eval_shape(hyperparameters, theta0)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError,
          jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError):
    def on_host(flats):
      rows = [jax.device_get(hyperparameters(jax.device_get(unravel(jax.numpy.asarray(flat)))))
              for flat in np.asarray(flats)]
      return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *rows)
    return on_host
  return jax.jit(jax.vmap(lambda flat: hyperparameters(unravel(flat))))
