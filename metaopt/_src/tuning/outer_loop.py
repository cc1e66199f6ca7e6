"""tune's outer loop: jitted calls of the tuner between checkpoints and progress lines, and what
each call logs (the tuner's info, the hyperparameters, each horizon's hypergradient noise and a
fresh horizon's evaluation at theta so far against theta0)."""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from metaopt._src.core import base
from metaopt._src.core import horizon
from metaopt._src.files import checkpoint
from metaopt._src.tensorboard import summary
from metaopt._src.tensorboard import views
from metaopt._src.tuning import report
from metaopt._src.tuning.report import say

# At most this many outer steps per jitted call (a call is one host round trip for the logs).
MAX_STEPS_PER_CALL = 25


class TuningStopped(RuntimeError):
  """More than ``max_skipped`` outer steps were non-finite; the checkpoint holds the last theta.

  Attributes:
    step: the outer step it stopped at.
    num_skipped: the non-finite outer steps so far.
    theta: theta's last finite value, flat.
  """

  def __init__(self, step: int, num_skipped: int, max_skipped: int, theta: np.ndarray):
    self.step, self.num_skipped, self.theta = step, num_skipped, theta
    super().__init__(
        f"stopped at outer step {step}: {num_skipped} outer steps had non-finite hypergradients "
        f"or inner losses (limit max_skipped={max_skipped}); theta stayed at its last finite "
        f"value {theta}. Lower the meta learning rate or clip the hypergradient "
        "(metaopt.meta_optimizer(..., max_grad_norm=...)).")


def fresh_horizon(system, evaluate, seed):
  """One fresh horizon at a theta, on the keys of ``seed + 1`` (every theta on the same data):
  the untuned-vs-tuned comparison's function, jitted once for the run."""
  return jax.jit(lambda th: horizon.evaluate_horizon(
      system, th, jax.random.key(seed + 1), evaluate=evaluate))


def outer_loop(t, state, start, outer_steps, *, theta0, window, windows, fresh,
               hyperparameters, writer, untuned_writer, checkpoint_path, run_config,
               checkpoint_every, log_every, image_every, max_skipped, num_chains, validated,
               verbose):
  """The outer steps from ``start``, in jitted calls that never straddle a checkpoint or a
  progress line. ``state`` is the tuner's state, or a function that makes it (compiled with the
  outer step, under the "compiling" line). ``fresh`` (or None) evaluates theta after one fresh
  horizon, logged at every progress line against theta0 (a sub-run). Returns (state, seconds,
  theta0's fresh evaluation or None)."""
  hyper0 = jax.device_get(hyperparameters(theta0))
  points0 = summary.schedule_points(hyper0)
  names = summary.coordinate_names(theta0, knots={k: len(v[0]) for k, v in points0.items()})
  if not log_every:  # ~20 lines, at the ends of calls
    chunk = steps_per_call(checkpoint_every)
    log_every = chunk * max(1, round(outer_steps / 20 / chunk))
  chunk = steps_per_call(math.gcd(checkpoint_every, log_every))
  image_every = image_every or log_every
  flat0, unravel = base.ravel(theta0)
  natural = report.natural(hyperparameters, unravel, theta0)
  for name, (labels, steps, _) in points0.items():
    say(verbose, f"{name}: a schedule, shown at its {len(labels)} "
         f"{'knots' if labels[0].startswith('knot') else 'points'} (inner steps "
         f"{', '.join(str(int(round(x))) for x in steps)})")
  noise = evaluation = None
  if writer is not None:
    noise = views.HorizonNoise(writer, names, num_chains=num_chains, windows=windows)
    if fresh is not None:
      evaluation = views.FreshEvaluation(writer, untuned_writer, fresh)
  sizes = sorted({min(chunk - s % chunk, outer_steps - s) for s in range(start, outer_steps)
                  if s == start or s % chunk == 0})

  def warm_up(state):  # the small jitted helpers, with the rest (matplotlib, imported by the
    del state           # first image, is left to the first call, which the ETA leaves out)
    for n in sizes:
      natural(np.zeros((n,) + flat0.shape, flat0.dtype))
    if evaluation is not None:
      evaluation.warm_up(theta0)

  state, compiled, compile_seconds = _compile(t, state, sizes, warm_up, verbose)
  if writer is not None:
    writer.custom_scalars(summary.tuner_layout(
        names, num_chains=num_chains, schedules={k: v[0] for k, v in points0.items()},
        eval_metrics=tuple(evaluation.shown()) if evaluation else (),
        log_names=frozenset(views.log_coordinates(names, flat0, hyper0)), windows=windows))
  calls, step = [], start  # (outer steps, seconds) of each call, its logs included
  while step < outer_steps:
    n = min(chunk - step % chunk, outer_steps - step)
    began = time.time()
    state, infos = compiled[n](state)
    infos, hyper = jax.device_get((infos, natural(infos["theta"])))
    progress = (step + n) % log_every < n or step + n == outer_steps
    if writer is not None:
      for i, s in enumerate(range(step + 1, step + n + 1)):
        info = {k: v[i] for k, v in infos.items()}
        summary.log_tuner_info(writer, info, s, names=names, window=window)
        noise.add(info, s)
        summary.log_hyperparameters(writer, {k: v[i] for k, v in hyper.items()}, s,
                                    image=s % image_every == 0 or s == 1)
      if evaluation is not None and progress:
        evaluation.log(state.best_theta if validated else state.theta, step + n)
    step += n
    skipped = int(infos["num_skipped"][-1])
    if checkpoint_path is not None and (step % checkpoint_every == 0 or step == outer_steps
                                        or skipped > max_skipped):
      writer.flush()
      untuned_writer.flush()
      checkpoint.save(checkpoint_path, state, config=run_config)
    if skipped > max_skipped:
      raise TuningStopped(step, skipped, max_skipped, np.asarray(infos["theta"][-1]))
    calls.append((n, time.time() - began))
    if progress:
      # The first call also compiles the small jitted helpers: left out once others exist.
      steps, seconds = np.sum(calls[1:] or calls, axis=0)
      per_step = seconds / steps
      say(verbose, f"step {step}/{outer_steps} | window loss {float(infos['loss'][-1]):.4g} | "
           f"{report.hyper_text({k: v[-1] for k, v in hyper.items()})} | skipped {skipped} | "
           + (f"best validation {float(infos['best_loss'][-1]):.4g} | " if validated else "")
           + f"{1e3 * per_step:.3g} ms/step, ETA "
           f"{report.duration(per_step * (outer_steps - step))}")
  run_seconds = sum(c[1] for c in calls)
  untuned = evaluation.untuned() if evaluation is not None else None
  return state, compile_seconds + run_seconds, untuned


def _compile(t, state, sizes, warm_up, verbose):
  """Compiles ``t.run`` for each number of outer steps per call (and makes the initial state if
  ``state`` is the function that makes it, and runs ``warm_up(state)``), saying so and timing
  it: what follows is what the ETA extrapolates.

  Returns (state, {steps per call: compiled run}, seconds).
  """
  if not sizes:  # a finished run, resumed: nothing to run
    return state, {}, 0.0
  began = time.time()
  say(verbose, f"compiling the outer step ({', '.join(map(str, sizes))} outer steps per call; "
       "XLA, once per run) ...")
  state = state() if callable(state) else state
  # The state is donated: each call's output reuses its input's buffers (one copy of the
  # chains' states and the estimators' carries less in memory; nothing reads the old state).
  run = jax.jit(t.run, static_argnums=1, donate_argnums=0)
  compiled = {n: run.lower(state, n).compile() for n in sizes}
  warm_up(state)
  seconds = time.time() - began
  say(verbose, f"compiled in {seconds:.1f} s")
  return state, compiled, seconds


def steps_per_call(every: int) -> int:
  """The largest divisor of ``every`` up to MAX_STEPS_PER_CALL: calls never straddle a
  checkpoint or a progress line (``every`` is the gcd of their periods), so a resumed run makes
  exactly the calls an uninterrupted one makes."""
  return max(d for d in range(1, min(every, MAX_STEPS_PER_CALL) + 1) if every % d == 0)
