"""The front-door job in one call: tune theta online, with progress, TensorBoard, checkpoints."""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np
import optax

from metaopt._src.core import base
from metaopt._src.files import checkpoint
from metaopt._src.devices import memory
from metaopt._src.estimators import registry
from metaopt._src.tensorboard import summary
from metaopt._src.tensorboard import views
from metaopt._src.tuning import options as options_lib
from metaopt._src.tuning import report
from metaopt._src.tuning import run_folder
from metaopt._src.tuning import tuner as tuner_lib
from metaopt._src.tuning import validation as validation_lib
from metaopt._src.tuning import outer_loop
from metaopt._src.tuning.outer_loop import TuningStopped  # noqa: F401 (its home was here)
from metaopt._src.tuning.report import say

# Online modes: the inner training restarts every horizon, or theta is tuned during one run.
MODES = ("restarts", "single_run")


class TuneResult(NamedTuple):
  """What :func:`tune` returns.

  Attributes:
    theta: the tuned hyperparameters (theta's own structure): with validation
      (the default), the best validated theta, the initial one if no theta
      beat it; without, where tuning ended.
    state: the final :class:`~metaopt.TunerState` (resume or continue from it).
    summary: what ``summary.json`` holds: ``config``, ``outer_steps``,
      ``num_skipped``, flat ``theta`` (= ``theta`` above), ``last_theta`` (where
      tuning ended) and ``theta_names``, ``hyperparameters`` (natural units, of
      ``theta``), with validation ``validation`` (the initial and the best
      validation loss, validations run, rollbacks), and with ``compare=True``
      ``untuned`` and ``tuned`` (one fresh horizon each, same keys: with the
      default validation, the very runs that validated them).
    logdir: the run folder, or None.
    last_theta: where tuning ended (the tuner's current theta).
  """
  theta: Any
  state: tuner_lib.TunerState
  summary: dict
  logdir: str | None
  last_theta: Any = None


def tune(system: base.UnrolledSystem, theta: Any, *, estimator: str | base.Estimator = "rtrl",
         num_steps: int = 10, num_particles: int = 8, sigma: float = 0.01,
         meta_optimizer: str | optax.GradientTransformation = "adam",
         validation: bool | validation_lib.Validation = True, rollback_factor: float | None = 1.5,
         mode: str = "restarts", outer_steps: int | None = None, num_chains: int = 1,
         seed: int = 0, output: options_lib.RunOutput | str | os.PathLike | None = None,
         max_skipped: int = 100, evaluate: Callable[[Any], Mapping[str, Any]] | None = None,
         hyperparameters: Callable[[Any], Mapping[str, Any]] | None = None,
         compare: bool = True, description: str | None = None,
         config: Mapping[str, Any] | None = None, verbose: bool = True,
         **moved: Any) -> TuneResult:
  """Tunes ``theta`` online on ``system``: the job of ``python -m launch.tune``, from Python.

  Every outer step runs one window of each chain's estimator and one
  meta-optimiser step (:func:`~metaopt.tuner`). Around it, as the launch
  script does: a progress line ~20 times (window loss, hyperparameters, ETA),
  TensorBoard logs in ``output``'s logdir
  (:func:`~metaopt.tensorboard.log_tuner_info`,
  :func:`~metaopt.tensorboard.log_hyperparameters`, ``eval/*`` from
  ``evaluate`` and an hparams session), a checkpoint every
  ``checkpoint_every`` outer steps, ``config.json`` and ``summary.json``.
  Calling it again with the same logdir and configuration resumes from the
  last checkpoint and ends bit-identical to an uninterrupted run; a logdir of
  another configuration, one locked by another process or a symbolic link
  where the run writes is refused before any compute. Without a logdir
  nothing is written.

  Options come in groups: the estimator, the meta-optimiser (one object), the
  guards, the run, where it writes (one object) and what it shows.

  Args:
    system: the inner loop, a :class:`~metaopt.UnrolledSystem` (for an optax
      training loop, ``unrolled.optax_system`` builds one).
    theta: the initial hyperparameters (a pytree of float arrays).
    estimator: a spec of :data:`~metaopt.ESTIMATORS` (``"uoro[rank=4]"``) or
      an :class:`~metaopt.Estimator` already built on ``system``.
    num_steps, num_particles, sigma: the spec's shared options
      (:func:`~metaopt.get_estimator`). For a built estimator, ``num_steps``
      is the inner steps of its window (for the per-step loss) and the others
      are ignored.
    meta_optimizer: :func:`metaopt.meta_optimizer(name, learning_rate, *,
      max_grad_norm, max_update, warmup_steps, decay_steps)
      <metaopt.meta_optimizer>` passed whole (its options are written to the
      run's configuration), a name of :data:`~metaopt.META_OPTIMIZERS` (that
      rule with the defaults), or any ``optax.GradientTransformation`` (used
      as given; name it in ``config``).
    rollback_factor: without validation only: after each horizon, set theta
      back to the one that started the best horizon if this one's mean loss
      exceeded this multiple of the best's (:func:`~metaopt.tuner`); None: never.
    validation: the drift guard and the product (restarts mode): True
      validates the initial theta and then theta every horizon by one fresh
      horizon at fixed theta on the comparison's keys (``seed + 1``), scored by
      the mean meta-loss of its last tenth; a theta that beats the best by
      more than the noise becomes the best, one that loses by more goes back
      to the best and shrinks the step (:class:`~metaopt.Validation`), and
      ``theta`` is the best validated. A :class:`~metaopt.Validation` (e.g.
      ``metaopt.validation(system, every=None, score=...)`` with per-example
      validation losses; ``every=None`` is one horizon) is used as given; False:
      none (the tuner's theta is the product, ``rollback_factor`` guards).
      Ignored in single-run mode, whose product is its own model.
    mode: ``"restarts"``: the inner training restarts every horizon and
      tuning goes on for ``outer_steps``; ``"single_run"``: ONE training run
      (the horizon) during which theta is tuned, as OHO does (the schedule's
      knots ahead keep being tuned as the run reaches them): ``outer_steps`` is
      the horizon's windows, and the summary holds ``single_run_final``, that
      run's own final model evaluated (chain 0), beside ``tuned``, a fresh
      retrain with the final theta.
    outer_steps: outer steps in all (a resumed run continues up to it);
      default 100, or one horizon in single-run mode.
    num_chains: independent estimator chains, averaged.
    seed: the same seed gives the same run.
    output: where the run writes and how often, a
      :class:`~metaopt.tuning.RunOutput` (``logdir``, ``checkpoint_every``,
      ``log_every``, ``image_every``); a folder is ``RunOutput(folder)``;
      None writes nothing.
    max_skipped: stop (:class:`TuningStopped`) once more outer steps than
      this had non-finite hypergradients or losses.
    evaluate: ``evaluate(inner_state) -> dict`` of scalars (e.g. validation
      accuracy), logged as ``eval/<name>`` on chain 0's inner state (particle
      0's for particle estimators) and, with ``compare``, after one fresh
      horizon.
    hyperparameters: ``hyperparameters(theta) -> dict`` in natural units
      (a schedule as ``<name>_curve`` and ``<name>_knots``); default: theta's
      own leaves. Written in jnp it is jitted with the logging; one that
      converts theta with numpy (``np.asarray``) is called on host values
      instead, one theta at a time.
    compare: at the end, train one fresh horizon with the initial and with the
      tuned theta on the same keys and print both.
    description: one paragraph printed first.
    config: more values that define this run (e.g. how the system was
      built): written to ``config.json`` with the call's own settings, and a
      logdir holding other values is refused. Name a custom meta-optimiser or
      estimator here: only their state's shapes are checked otherwise.
    verbose: print progress lines and the comparison.
    **moved: the options these groups replaced, for one release, with a
      DeprecationWarning: ``meta_lr``, ``max_grad_norm``, ``max_update``,
      ``warmup_steps``, ``decay_steps`` (now ``meta_optimizer``'s) and
      ``logdir``, ``checkpoint_every``, ``log_every``, ``image_every`` (now
      ``output``'s).

  Returns:
    A :class:`TuneResult`.

  Raises:
    ValueError: for a bad argument, before any compute or file written.
    metaopt.files.RunFolderError: (a ValueError) if the logdir cannot be used.
    metaopt.checkpoint.CheckpointError: for a damaged or foreign checkpoint.
    TuningStopped: after more than ``max_skipped`` non-finite outer steps.

  Examples:
    >>> import jax.numpy as jnp, metaopt
    >>> system = metaopt.UnrolledSystem(
    ...     init=lambda key, th: jnp.ones(2),
    ...     step=lambda s, th, key: (0.5 * s + th, jnp.sum((s - 1.0) ** 2)), horizon=4)
    >>> result = metaopt.tune(system, jnp.float32(0.0), estimator="rtrl", num_steps=2,
    ...                       meta_optimizer=metaopt.meta_optimizer("sgd", 0.01),
    ...                       outer_steps=20, verbose=False)
    >>> bool(result.theta > 0.0)  # the fixed point 2 * theta moves towards 1
    True
  """
  base.check_system(system)
  base.check_theta(theta)
  base.check_finite_theta(theta)
  outer_opt, output = options_lib.moved_options(meta_optimizer, output, moved)
  logdir, checkpoint_every = output.logdir, output.checkpoint_every
  spec = estimator if isinstance(estimator, str) else None
  if spec is not None:
    est = registry.get_estimator(spec, system, num_steps=num_steps,
                                 num_particles=num_particles, sigma=sigma)
    window = registry.window_length(spec, system, num_steps)
  else:
    base.check_estimator(estimator)
    est, window = estimator, base.check_count(num_steps, "num_steps")
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  one_run = system.horizon // window
  if outer_steps is None:
    outer_steps = one_run if mode == "single_run" else 100
  outer_steps = base.check_count(outer_steps, "outer_steps")
  if mode == "single_run" and outer_steps != one_run:
    raise ValueError(f"mode='single_run' tunes during ONE training run: the horizon "
                     f"{system.horizon} / window {window} = {one_run} outer steps; got "
                     f"outer_steps={outer_steps} (leave it out)")
  base.check_count(max_skipped, "max_skipped", minimum=0)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
  for fn, name in ((evaluate, "evaluate"), (hyperparameters, "hyperparameters")):
    if fn is not None and not callable(fn):
      raise ValueError(f"{name} must be a function, got {base.describe(fn)}")
  check = _validation(validation, system, mode=mode, one_run=one_run, seed=seed)
  t = tuner_lib.tuner(est, outer_opt, num_chains=num_chains,
                      horizon_windows=None if rollback_factor is None else one_run,
                      rollback_factor=1.5 if rollback_factor is None else rollback_factor,
                      validation=check)
  memory.check_memory(est, theta, num_chains=num_chains, what="num_chains")
  init = lambda: jax.jit(t.init)(jax.random.key(seed), theta)
  state_shape = jax.eval_shape(init)
  if evaluate is not None and not hasattr(state_shape.estimator_state, "inner"):
    raise ValueError("evaluate needs an estimator state with an `inner` field (the inner "
                     "state); this estimator's state has none")
  run_config = run_folder.run_config(spec, num_steps, num_particles, sigma, outer_opt,
                                     num_chains, seed, checkpoint_every, theta, config)
  run_config.update(mode=mode, rollback_factor=rollback_factor,
                    validation=None if check is None else {
                        "every": check.every, "significance": check.significance,
                        "tolerance": check.tolerance, "shrink": check.shrink,
                        "radius": check.radius,
                        "score": "default" if validation is True else "custom"})
  hyperparameters = hyperparameters or _own_leaves

  lock, resuming = None, False
  try:
    if logdir is not None:
      lock, resuming = run_folder.claim(logdir, run_config)
    say(verbose, f"{description + chr(10) if description else ''}estimator "
         f"{spec or 'custom'} (window {window}), {num_chains} chain(s), "
         f"{options_lib.describe_optimizer(outer_opt)}, {outer_steps} outer steps"
         f"{'; logdir ' + logdir if logdir else ''}")
    start, state = 0, None
    checkpoint_path = None if logdir is None else os.path.join(logdir, run_folder.CHECKPOINT)
    if resuming and os.path.exists(checkpoint_path):
      # Into the state's shapes alone: a damaged or foreign checkpoint costs no compute.
      state = checkpoint.restore(checkpoint_path, state_shape, config=run_config)
      start = int(state.step)
      say(verbose, f"resuming {logdir} from outer step {start}")
    resume_step = start + 1 if resuming else None
    writer = untuned_writer = None
    if logdir is not None:  # theta0's values in a sub-run: TensorBoard draws each run a colour
      writer = summary.SummaryWriter(logdir, resume_step=resume_step)
      untuned_writer = summary.SummaryWriter(os.path.join(logdir, views.UNTUNED),
                                             resume_step=resume_step)
    fresh = outer_loop.fresh_horizon(system, evaluate, seed) if compare else None
    try:
      state, wall, untuned = outer_loop.outer_loop(
          t, init if state is None else state, start, outer_steps, theta0=theta, window=window,
          windows=one_run, fresh=fresh, hyperparameters=hyperparameters, writer=writer,
          untuned_writer=untuned_writer, checkpoint_path=checkpoint_path,
          run_config=run_config, checkpoint_every=checkpoint_every,
          log_every=output.log_every, image_every=output.image_every, max_skipped=max_skipped,
          num_chains=num_chains, validated=check is not None, verbose=verbose)
      tuned, out = report.finish(system, theta, state, evaluate=evaluate, mode=mode,
                                 validated=check is not None, hyperparameters=hyperparameters,
                                 fresh=fresh, untuned=untuned, run_config=run_config, wall=wall,
                                 writer=writer, untuned_writer=untuned_writer, logdir=logdir,
                                 verbose=verbose)
    finally:
      for w in (writer, untuned_writer):
        if w is not None:
          w.close()
    return TuneResult(tuned, state, out, logdir, state.theta)
  finally:
    if lock is not None:
      lock.release()


def _validation(validation, system, *, mode, one_run, seed):
  """The tuner's Validation (None: none) from ``tune``'s ``validation`` argument."""
  if isinstance(validation, (bool, np.bool_)):
    if not validation or mode == "single_run":
      return None
    return validation_lib.validation(system, every=one_run, seed=(seed + 1) % 2**32)
  validation = validation_lib.check_validation(validation, every_unset=True)
  if mode == "single_run":
    return None
  return validation._replace(every=validation.every or one_run)


def _own_leaves(theta):
  return theta if isinstance(theta, Mapping) else {"theta": theta}
