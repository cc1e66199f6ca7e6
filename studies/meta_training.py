"""Meta-training a learned optimizer over a task family, on one process or several.

The outer loop is :func:`metaopt.tuner` unchanged: each task is a chain (its
own sampled tasks, one per horizon, with the estimator's particles on it),
theta is the learned optimizer's weights. Across processes nothing else
changes either: with JAX's multi-controller runtime (``jax.distributed``)
``jax.devices()`` lists every process's devices, the tuner lays its chains
out over all of them (:func:`metaopt.devices.shard_leading`), and XLA turns the
average over chains into a cross-process all-reduce. Every process then holds
the same theta; process 0 alone writes files.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import optax

import metaopt
from metaopt import learned_optimizers
from metaopt._src.core import base as metaopt_base
from metaopt._src.files import files
from metaopt._src.devices import sharding
from metaopt._src.tensorboard import summary
from metaopt._src.tuning import run_folder
from unrolled import families

CHECKPOINT, CONFIG, SUMMARY, THETA = "checkpoint.npz", "config.json", "summary.json", "theta.npz"
COMPARISON = "comparison"  # .json, .md and .png
# Outer steps per jitted call at most: few calls (a call costs ~0.1 ms of dispatch), and a
# progress line, checkpoint or test evaluation always falls between two calls.
MAX_STEPS_PER_CALL = 500
# The estimators meta-training offers: theta has hundreds to thousands of coordinates, which the
# forward-mode estimators (rtrl, uoro, forward_gradient) do not scale to.
ESTIMATORS = ("pes", "truncated_es", "nres", "tbptt", "full_bptt")
DEFAULT_ADAM_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
DEFAULT_SGD_LRS = (1e-2, 3e-2, 1e-1, 3e-1, 1.0)


# Windows up to this long are unrolled by tbptt in meta-training (see estimator_spec).
UNROLL_UP_TO = 50


def estimator_spec(spec: str, num_steps: int) -> str:
  """The estimator spec meta-training runs: ``spec``, with tbptt's window unrolled when short.

  Meta-training's windows are short (K = 10 to 50), and an unrolled window
  keeps its residuals as separate buffers instead of stacking them in the
  scan's zero-filled arrays (dynamic-update-slices and copies): measured per
  outer step on 8 quadratic tasks with the MLP optimizer, 28.4 -> 21.6 ms at
  1,000 dimensions and 3,672 -> 2,474 ms at 100,000, compile time about equal.
  A spec that sets ``unroll`` itself is kept.

  Raises:
    ValueError: for an estimator meta-training does not take.

  Examples:
    >>> from studies import meta_training
    >>> meta_training.estimator_spec("tbptt", 10)
    'tbptt[unroll=True]'
    >>> meta_training.estimator_spec("pes[num_particles=4]", 10)
    'pes[num_particles=4]'
  """
  name, own = metaopt.parse_spec(spec)
  if name not in ESTIMATORS:
    raise ValueError(f"estimator {spec!r}: meta-training takes one of {list(ESTIMATORS)}")
  window = own.get("num_steps", num_steps)
  if name == "tbptt" and "unroll" not in own and window <= UNROLL_UP_TO:
    options = {**own, "unroll": True}
    return f"{name}[{';'.join(f'{k}={v}' for k, v in options.items())}]"
  return spec


class MetaTrainResult(NamedTuple):
  """What :func:`meta_train` returns.

  Attributes:
    theta: the meta-trained weights (host numpy arrays).
    summary: what ``summary.json`` holds.
  """
  theta: Any
  summary: dict


def is_main() -> bool:
  """Whether this process writes the files (process 0)."""
  return jax.process_index() == 0


def meta_train(system: metaopt.UnrolledSystem, theta: Any, *, estimator: str, num_steps: int,
               num_particles: int, sigma: float, num_tasks: int,
               meta_optimizer: optax.GradientTransformation, outer_steps: int, seed: int,
               logdir: str | None, checkpoint_every: int, log_every: int, test_every: int,
               test: Callable[[Any], Mapping[str, jax.Array]] | None = None,
               validation: metaopt.Validation | None = None,
               config: Mapping[str, Any] | None = None, verbose: bool = True) -> MetaTrainResult:
  """Meta-trains ``theta`` on ``system`` (a :func:`~unrolled.families.family_system`).

  Args:
    system: the inner loop; its ``init`` samples a task per horizon.
    theta: the initial weights.
    estimator: a spec of :data:`ESTIMATORS` (options in brackets allowed).
    num_steps, num_particles, sigma: the estimator's options.
    num_tasks: tuner chains, each training its own sampled tasks; spread over
      every process's devices when their number divides it.
    meta_optimizer: the outer optax optimiser.
    outer_steps: meta-gradient steps in all (a resumed run goes on to it).
    seed: the run's key.
    logdir: run folder (None: nothing written); rerunning on it resumes from
      its checkpoint, a folder of another configuration is refused.
    checkpoint_every, log_every, test_every: outer steps between checkpoints,
      progress lines and held-out test evaluations (0: none but the last).
    test: ``test(theta) -> {name: (num_test_tasks,) values}`` of held-out tasks
      trained with theta (e.g. :func:`evaluation_fn`); logged as medians, for the
      current and (with ``validation``) the best validated weights.
    validation: the tuner's acceptance test of the weights (e.g.
      :func:`validation`); the product is then the best validated weights.
    config: what defines the run, for ``config.json`` and the checkpoint.
    verbose: print progress lines (process 0 only).

  Returns:
    A :class:`MetaTrainResult`.
  """
  outer_steps = metaopt_base.check_count(outer_steps, "outer_steps")
  for name, value in (("checkpoint_every", checkpoint_every), ("log_every", log_every),
                      ("test_every", test_every)):
    metaopt_base.check_count(value, name, minimum=0)
  num_tasks = metaopt_base.check_count(num_tasks, "num_tasks")
  if test is not None and not callable(test):
    raise ValueError(f"test must be a function of theta, got {metaopt_base.describe(test)}")
  spec = estimator_spec(estimator, num_steps)
  spread = sharding.spreads(num_tasks)
  if jax.process_count() > 1 and not spread:
    raise ValueError(f"num_tasks={num_tasks} must be a multiple of the devices of all "
                     f"processes ({jax.device_count()}), which share the tasks")
  est = metaopt.get_estimator(spec, system, num_steps=num_steps, num_particles=num_particles,
                              sigma=sigma, spread_copies=not spread)
  window = metaopt.horizon.window_length(spec, system, num_steps)
  t = metaopt.tuner(est, meta_optimizer, num_chains=num_tasks, spread_chains=spread,
                    validation=validation)
  main = is_main()
  say = (lambda line: print(line, flush=True)) if (verbose and main) else (lambda line: None)
  run_config = dict(config or {})
  run_config.update(estimator=spec, num_steps=num_steps, num_particles=num_particles,
                    sigma=sigma, num_tasks=num_tasks, seed=seed,
                    num_weights=learned_optimizers.num_weights(theta),
                    validate_every=None if validation is None else validation.every)

  lock, resuming, refusal = None, False, None
  if logdir is not None and main:
    try:
      lock, resuming = run_folder.claim(logdir, run_config)
    except run_folder.RunFolderError as e:
      refusal = e
  _raise_everywhere(refusal, run_folder.RunFolderError, "the run folder")
  try:
    state = jax.jit(t.init)(jax.random.key(seed), theta)
    checkpoint_path = None if logdir is None else os.path.join(logdir, CHECKPOINT)
    resuming = _agree(resuming)
    if resuming:
      state = _restore(checkpoint_path, state, run_config)
    start = int(np.asarray(state.step))
    if resuming:
      say(f"resuming {logdir} from outer step {start}")
    writer = (summary.SummaryWriter(logdir, resume_step=start + 1 if resuming else None)
              if logdir is not None and main else None)
    try:
      return _loop(t, state, start, outer_steps, window=window, num_tasks=num_tasks,
                   writer=writer, logdir=logdir, checkpoint_path=checkpoint_path,
                   run_config=run_config, checkpoint_every=checkpoint_every,
                   log_every=log_every, test_every=test_every, test=test, say=say,
                   validated=validation is not None)
    finally:
      if writer is not None:
        writer.close()
  finally:
    if lock is not None:
      lock.release()


def _loop(t, state, start, outer_steps, *, window, num_tasks, writer, logdir, checkpoint_path,
          run_config, checkpoint_every, log_every, test_every, test, say, validated):
  periods = [p for p in (checkpoint_every, log_every, test_every) if p]
  every = math.gcd(*periods) if periods else outer_steps
  per_call = max(d for d in range(1, min(every, MAX_STEPS_PER_CALL) + 1) if every % d == 0)

  def reduced(state, n):
    state, info = t.run(state, n)
    norm = jnp.linalg.norm(info["grad"], axis=-1)
    # Signal to noise of the chain-averaged meta-gradient: its norm over the norm of its
    # standard error, sqrt(sum of the chains' variances / num_tasks) (1 task: not defined).
    se = jnp.sqrt(jnp.sum(info["chain_variance"], axis=-1) / num_tasks)
    out = {"meta_loss": info["loss"] / window, "meta_grad_norm": norm,
           "meta_grad_snr": jnp.where(se > 0, norm / se, jnp.nan),
           "num_skipped": info["num_skipped"],
           "theta_norm": jnp.linalg.norm(info["theta"], axis=-1),
           "validation_loss": info["validation_loss"], "best_validation_loss": info["best_loss"],
           "num_rollbacks": info["num_rollbacks"]}
    return state, out

  run = jax.jit(reduced, static_argnums=1)
  wall_start, call_times, history = time.perf_counter(), [], []
  compile_seconds = None
  step = start
  previous = _previous_summary(logdir) if is_main() else None
  # A resumed run keeps the tests its earlier part made up to the checkpoint.
  test_rows = [r for r in (previous or {}).get("tests", []) if r["step"] <= start]

  def summary_of(step, finished):
    per_step = float(np.median(call_times)) if call_times else None
    return {"config": run_config, "outer_steps": outer_steps, "step": step,
            "finished": finished, "start_step": start, "num_processes": jax.process_count(),
            "num_devices": jax.device_count(), "wall_seconds": time.perf_counter() - wall_start,
            "first_call_seconds": compile_seconds, "seconds_per_outer_step": per_step,
            "final": history[-1] if history else None, "tests": test_rows,
            "theta_is": "best validated" if validated else "last",
            "num_skipped": int(np.asarray(state.num_skipped))}

  while step < outer_steps:
    # Calls end on multiples of per_call, even when a finished run is extended from a step
    # that is not one: checkpoints, progress lines and tests keep their steps.
    n = min(per_call - step % per_call, outer_steps - step)
    begin = time.perf_counter()
    state, out = run(state, n)
    out = {k: np.asarray(v) for k, v in out.items()}
    seconds = time.perf_counter() - begin
    if compile_seconds is None:
      compile_seconds = seconds
    elif n == per_call:
      call_times.append(seconds / n)
    for i in range(n):
      row = {k: float(v[i]) for k, v in out.items()}
      history.append(row)
      if writer is not None:
        names = ("meta_loss", "meta_grad_norm", "meta_grad_snr", "theta_norm") + (
            ("validation_loss", "best_validation_loss", "num_rollbacks") if validated else ())
        for k in names:
          if math.isfinite(row[k]):
            writer.scalar(f"meta/{k}", row[k], step + i + 1)
        writer.scalar("meta/num_skipped", row["num_skipped"], step + i + 1)
    step += n
    last = step == outer_steps
    if test is not None and ((test_every and step % test_every == 0) or last):
      current, best = _host((state.theta, state.best_theta))  # every process gathers
      if is_main():  # one process tests
        medians = _test_medians(test, current)
        if validated:
          medians.update({f"best_{k}": v for k, v in _test_medians(test, best).items()})
        test_rows.append({"step": step, **medians})
        if writer is not None:
          for k, v in medians.items():
            writer.scalar(f"test/{k}_median", v, step)
    if (log_every and step % log_every == 0) or last:
      row = history[-1]
      tail = "" if not test_rows or test_rows[-1]["step"] != step else (
          "; held-out " + ", ".join(f"{k} {v:.4g}" for k, v in test_rows[-1].items()
                                    if k != "step"))
      checked = (f", best validation {row['best_validation_loss']:.4g} (rollbacks "
                 f"{int(row['num_rollbacks'])})" if validated else "")
      say(f"outer step {step}/{outer_steps}: meta-loss {row['meta_loss']:.4g}, meta-grad norm "
          f"{row['meta_grad_norm']:.3g} (SNR {row['meta_grad_snr']:.2f}), skipped "
          f"{int(row['num_skipped'])}{checked}{tail}")
    if checkpoint_path is not None and ((checkpoint_every and step % checkpoint_every == 0)
                                        or last):
      _save(checkpoint_path, state, run_config)
      if logdir is not None and is_main() and not last:  # the tests so far survive a kill
        files.write_atomic(os.path.join(logdir, SUMMARY), _json(summary_of(step, False)))
      if writer is not None:
        writer.flush()
  theta = _host(state.best_theta if validated else state.theta)
  if previous is not None and previous.get("finished") and step == start:
    return MetaTrainResult(theta, previous)  # a finished run rerun: its summary stands
  result = summary_of(step, True)
  per_step = result["seconds_per_outer_step"]
  if logdir is not None and is_main():
    metaopt.checkpoint.save(os.path.join(logdir, THETA), theta, config=run_config)
    files.write_atomic(os.path.join(logdir, SUMMARY), _json(result))
  if per_step is not None:
    say(f"{per_step * 1e3:.4g} ms per outer step (median over calls after the first, which "
        f"took {compile_seconds:.2f} s with compilation)")
  return MetaTrainResult(theta, result)


def _previous_summary(logdir):
  """The summary.json a previous run of this logdir wrote (None: none, or unreadable)."""
  path = None if logdir is None else os.path.join(logdir, SUMMARY)
  if path is None or not os.path.isfile(path) or os.path.islink(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _test_medians(test, theta):
  values = jax.jit(test)(theta)
  return {k: float(np.median(np.asarray(v))) for k, v in values.items()}


def _host(tree):
  """A global (possibly sharded over processes) pytree as host numpy arrays, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def _raise_everywhere(error: Exception | None, kind: type, what: str) -> None:
  """Process 0's refusal raised on every process (the others would wait in a collective)."""
  if not _agree(error is None):
    raise error if error is not None else kind(f"process 0 refused {what} (its output says why)")


def _agree(flag: bool) -> bool:
  """Process 0's value of ``flag`` on every process."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def _save(path, state, run_config):
  host = _host(state)  # every process takes part in the gather; process 0 writes
  if is_main():
    metaopt.checkpoint.save(path, host, config=run_config)


def _restore(path, fresh, run_config):
  """The checkpoint into ``fresh``'s shapes and shardings; process 0 reads, every process gets it.

  No checkpoint yet (a run killed before its first one): ``fresh``.
  """
  loaded, refusal = None, None
  if is_main() and os.path.exists(path):
    try:
      loaded = metaopt.checkpoint.restore(path, jax.eval_shape(lambda: fresh),
                                          config=run_config)
    except metaopt.checkpoint.CheckpointError as e:
      refusal = e
  _raise_everywhere(refusal, metaopt.checkpoint.CheckpointError, "the checkpoint")
  if not _agree(loaded is not None):
    return fresh
  if is_main():
    host = jax.device_get(loaded)
  else:
    host = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), fresh)
  if jax.process_count() > 1:
    host = multihost_utils.broadcast_one_to_all(host)
  return jax.tree.map(
      lambda x, like: jax.make_array_from_callback(like.shape, like.sharding,
                                                   lambda index: np.asarray(x)[index]),
      host, fresh)


def _json(obj) -> str:
  return json.dumps(obj, indent=2, default=lambda x: x.tolist() if isinstance(
      x, (np.ndarray, np.generic)) else str(x))


# ----------------------------------------------------------------------------------------------
# Held-out tasks: the meta-trained optimizer against Adam and SGD at their best fixed rates.


def evaluation_fn(family: families.TaskFamily,
                  learned_optimizer: learned_optimizers.LearnedOptimizer,
            *, num_tasks: int, num_steps: int, seed: int,
            stream: int = families.TEST) -> Callable[[Any], dict]:
  """``test(theta)``: held-out tasks trained ``num_steps`` steps with theta; their evaluations."""
  keys = families.held_out_keys(num_tasks, seed=seed, stream=stream)

  def test(theta):
    optimizer = learned_optimizer.optimizer(theta)
    return jax.vmap(lambda k: families.train_task(family, optimizer, k,
                                                  num_steps=num_steps)[0])(keys)

  return test


def validation(family: families.TaskFamily,
               learned_optimizer: learned_optimizers.LearnedOptimizer, *, num_tasks: int,
               num_steps: int, seed: int, every: int,
               significance: float = metaopt.tuning.DEFAULT_SIGNIFICANCE,
               shrink: float = 0.5) -> metaopt.Validation:
  """The tuner's acceptance test of the weights on validation tasks (not the test tasks).

  Every ``every`` outer steps the weights train ``num_tasks`` validation tasks
  (their own key stream) for ``num_steps`` steps; the per-task final training
  losses are the paired examples of :class:`metaopt.Validation`: the best
  validated weights are the run's product, weights worse than them beyond the
  noise are sent back to them (and the meta step is multiplied by ``shrink``). Learned optimizers
  meta-trained by truncated estimators can drift away from their best weights
  (truncation bias); this keeps the best ones, as selecting a checkpoint on
  validation tasks does.
  """
  test = evaluation_fn(family, learned_optimizer, num_tasks=num_tasks, num_steps=num_steps,
                 seed=seed, stream=families.VALIDATION)

  def validate(theta):
    losses = test(theta)["train_loss"]
    return jnp.where(jnp.isfinite(losses), losses, jnp.inf)

  return metaopt.Validation(validate, every, significance=significance, shrink=shrink)


def compare(family: families.TaskFamily, learned_optimizer: learned_optimizers.LearnedOptimizer,
            theta: Any, *, num_tasks: int, num_steps: int, seed: int,
            adam_lrs: Sequence[float] = DEFAULT_ADAM_LRS,
            sgd_lrs: Sequence[float] = DEFAULT_SGD_LRS) -> dict:
  """Held-out tasks trained by the learned optimizer, and by Adam and SGD at every rate of a grid.

  Every optimizer trains the same tasks from the same initial parameters with
  the same minibatches (:func:`~unrolled.families.train_task` on the same
  keys). Adam's and SGD's best rate is chosen by the median final training
  loss over these very tasks (the baselines' best case: their rate is tuned on
  the test tasks).

  Returns:
    ``{"rows": {optimizer: {"lr", "final" (per-task evaluations), "curve"
    (median over tasks of the per-step minibatch loss)}}, "best": {"adam": lr,
    "sgd": lr}, ...}``.
  """
  keys = families.held_out_keys(num_tasks, seed=seed)

  def run(optimizer):
    evals, losses = jax.jit(jax.vmap(lambda k: families.train_task(
        family, optimizer, k, num_steps=num_steps)))(keys)
    return ({k: np.asarray(v).tolist() for k, v in evals.items()},
            np.median(np.asarray(losses), axis=0).tolist())

  rows = {}
  final, curve = run(learned_optimizer.optimizer(theta))
  rows[learned_optimizer.name] = {"lr": None, "final": final, "curve": curve}
  best = {}
  for name, make, lrs in (("adam", optax.adam, adam_lrs), ("sgd", optax.sgd, sgd_lrs)):
    scores = {}
    for lr in lrs:
      final, curve = run(make(lr))
      rows[f"{name}(lr={lr:g})"] = {"lr": lr, "final": final, "curve": curve}
      scores[lr] = _median_or_inf(final["train_loss"])
    best[name] = min(scores, key=scores.get)
  lopt_final = np.asarray(rows[learned_optimizer.name]["final"]["train_loss"])
  adam_final = np.asarray(rows[f"adam(lr={best['adam']:g})"]["final"]["train_loss"])
  return {"family": family.name, "num_tasks": num_tasks, "num_steps": num_steps,
          "learned_optimizer": learned_optimizer.name, "rows": rows, "best": best,
          "median_final_train_loss": {
              "learned": float(np.median(lopt_final)), "adam_best": float(np.median(adam_final)),
              "sgd_best": _median_or_inf(rows[f"sgd(lr={best['sgd']:g})"]["final"]["train_loss"])},
          "tasks_won_against_adam_best": int(np.sum(lopt_final < adam_final))}


def _median_or_inf(values) -> float:
  values = np.asarray(values, np.float64)
  values = np.where(np.isfinite(values), values, np.inf)
  return float(np.median(values))


def write_comparison(folder: str, result: dict) -> list[str]:
  """``comparison.json``, ``comparison.md`` and ``comparison.png`` in ``folder``; their paths."""
  paths = [os.path.join(folder, f"{COMPARISON}.{ext}") for ext in ("json", "md", "png")]
  files.refuse_links(folder, [os.path.basename(p) for p in paths])
  files.write_atomic(paths[0], _json(result))
  files.write_atomic(paths[1], comparison_markdown(result))
  files.write_atomic(paths[2], _comparison_png(result))
  return paths


def comparison_markdown(result: dict) -> str:
  best = result["best"]
  lopt = result["learned_optimizer"]
  shown = [lopt, f"adam(lr={best['adam']:g})", f"sgd(lr={best['sgd']:g})"]
  lines = [f"Held-out tasks of {result['family']}: {result['num_tasks']} tasks, "
           f"{result['num_steps']} inner steps each; Adam's and SGD's rates are their best on "
           "these tasks (median final training loss).", "",
           "| optimizer | final train loss (median) | min-max | test loss (median) |"
           + (" test accuracy (median) |" if "test_accuracy" in
              result["rows"][lopt]["final"] else ""),
           "|---|---|---|---|" + ("---|" if "test_accuracy" in
                                  result["rows"][lopt]["final"] else "")]
  for name, row in result["rows"].items():
    final = row["final"]
    train = np.asarray(final["train_loss"])
    cells = [f"**{name}**" if name in shown else name, f"{np.median(train):.4g}",
             f"{train.min():.4g}-{train.max():.4g}",
             f"{np.median(final['test_loss']):.4g}" if "test_loss" in final else "-"]
    if "test_accuracy" in final:
      cells.append(f"{np.median(final['test_accuracy']):.4f}")
    lines.append("| " + " | ".join(cells) + " |")
  m = result["median_final_train_loss"]
  lines += ["", f"Median final training loss: {lopt} {m['learned']:.4g}, Adam at its best rate "
            f"{m['adam_best']:.4g}, SGD at its best rate {m['sgd_best']:.4g}; {lopt} ends below "
            f"Adam's best on {result['tasks_won_against_adam_best']} of {result['num_tasks']} "
            "tasks."]
  return "\n".join(lines) + "\n"


def _comparison_png(result: dict) -> bytes:
  import io  # pylint: disable=g-import-not-at-top
  plt = summary.pyplot()
  best = result["best"]
  names = [result["learned_optimizer"], f"adam(lr={best['adam']:g})",
           f"sgd(lr={best['sgd']:g})"]
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for name in names:
    curve = np.asarray(result["rows"][name]["curve"])
    width = max(1, len(curve) // 20)  # a moving average over 5% of the steps
    smooth = np.convolve(curve, np.ones(width) / width, mode="valid")
    left.plot(np.arange(len(smooth)) + width, smooth, label=name)
  left.set_xlabel("inner step")
  left.set_ylabel("training minibatch loss (median over tasks, smoothed)")
  left.set_yscale("log")
  left.legend()
  left.set_title(f"{result['family']}: held-out tasks")
  finals = [np.asarray(result["rows"][n]["final"]["train_loss"]) for n in names]
  for i, values in enumerate(finals):
    right.scatter(np.full(len(values), i) + np.linspace(-0.15, 0.15, len(values)), values, s=12)
    right.plot([i - 0.25, i + 0.25], [np.median(values)] * 2, color="black")
  right.set_xticks(range(len(names)), names)
  right.set_ylabel("final training loss (each task; line: median)")
  right.set_yscale("log")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  return buffer.getvalue()
