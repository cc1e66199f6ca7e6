"""Any optax training loop as an UnrolledSystem, with a spec of which hyperparameters theta sets."""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import metaopt
from unrolled.problem import Problem
from unrolled.schedules import Schedule

# Names the adapter implements itself (the rest must be the optimiser's own hyperparameters).
INIT_SCALE = "init_scale"
WEIGHT_DECAY = "weight_decay"


class Hyperparameter(NamedTuple):
  """How one entry of theta maps to a hyperparameter.

  Attributes:
    transform: ``"log"`` (value = exp(theta)), ``"logit"`` (value =
      sigmoid(theta)) or ``"schedule"`` (value = schedule(theta, step)).
    init: initial value in natural units (ignored for schedules).
    per_group: one value per parameter group (e.g. per layer) instead of one
      for all parameters.
    schedule: the :class:`~unrolled.schedules.Schedule`, for ``"schedule"``.
  """
  transform: str
  init: float = 1.0
  per_group: bool = False
  schedule: Schedule | None = None


def log(value: float, *, per_group: bool = False) -> Hyperparameter:
  """A positive hyperparameter learned as its log (learning rate, weight decay, init scale, eps)."""
  if not value > 0:
    raise ValueError(f"a log-parameterised hyperparameter must start positive, got {value!r}")
  return Hyperparameter("log", float(value), per_group)


def logit(value: float, *, per_group: bool = False) -> Hyperparameter:
  """A hyperparameter in (0, 1) learned as its logit (momentum, Adam's b1 and b2)."""
  if not 0 < value < 1:
    raise ValueError(f"a logit-parameterised hyperparameter must start in (0, 1), got {value!r}")
  return Hyperparameter("logit", float(value), per_group)


def scheduled(schedule: Schedule, *, per_group: bool = False) -> Hyperparameter:
  """A hyperparameter that follows a learnable schedule over the inner steps."""
  return Hyperparameter("schedule", 1.0, per_group, schedule)


class OptaxState(NamedTuple):
  """Inner state of an :func:`optax_system`.

  Attributes:
    params: the parameters.
    opt_state: the optimiser's state.
    step: inner steps since the horizon started.
    train_loss: the last step's minibatch loss (0 before the first step; for logs,
      it carries no gradient).
  """
  params: Any
  opt_state: Any
  step: jax.Array
  train_loss: jax.Array


def _default_groups(params) -> Any:
  """One group per top-level entry of the parameter pytree (a layer, for a list of layers)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: jax.tree_util.keystr(path[:1]) if path else "all", params)


def initial_theta(hyperparams: Mapping[str, Hyperparameter], num_groups: int = 1) -> dict:
  """theta (unconstrained, float32) at the spec's initial values."""
  theta = {}
  for name, h in hyperparams.items():
    if h.transform == "schedule":
      value = jnp.asarray(h.schedule.params, jnp.float32)
    elif h.transform == "log":
      value = jnp.float32(np.log(h.init))
    else:
      value = jnp.float32(np.log(h.init) - np.log1p(-h.init))
    theta[name] = jnp.broadcast_to(value, (num_groups,) + value.shape) if h.per_group else value
  return theta


def natural_values(hyperparams: Mapping[str, Hyperparameter], theta: Mapping[str, jax.Array],
                   step: jax.Array) -> dict:
  """Each hyperparameter in natural units at inner step ``step``: a scalar, or (G,) per group."""
  out = {}
  for name, h in hyperparams.items():
    t = theta[name]
    if h.transform == "log":
      out[name] = jnp.exp(t)
    elif h.transform == "logit":
      out[name] = jax.nn.sigmoid(t)
    elif h.per_group:
      out[name] = jax.vmap(lambda p: h.schedule(p, step))(t)
    else:
      out[name] = h.schedule(t, step)
  return out


def optax_system(*, loss_fn: Callable, sample_batch: Callable, init_params: Callable,
                 optimizer: optax.GradientTransformation,
                 hyperparams: Mapping[str, Hyperparameter], horizon: int,
                 validation_batch: Any = None, meta_loss: str = "validation",
                 param_groups: Callable | None = None,
                 validation_batch_size: int | None = None) -> metaopt.UnrolledSystem:
  """Turns an optax training loop into a :class:`metaopt.UnrolledSystem`.

  theta is a dict with one entry per ``hyperparams`` key (see
  :func:`initial_theta`). Names are the optimiser's own hyperparameters
  (``learning_rate``, ``momentum``, ``b1``, ``b2``, ``eps``, ...), plus two
  the adapter implements: ``init_scale`` multiplies the initial parameters
  (so ``init`` depends on theta) and ``weight_decay``, if the optimiser has
  none of its own, adds ``weight_decay * params`` to the gradient (L2).
  Per-group entries get one value per parameter group; the optimiser then runs
  as one copy per group (``optax.multi_transform``).

  The values set into the optimiser state after each update are stored
  without gradient: the next step overwrites them, so they carry no influence,
  and forward-mode estimators then spend no effort (or, for UORO, no noise)
  on them.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` training loss.
    sample_batch: ``sample_batch(key) -> batch``; the step key picks the minibatch.
    init_params: ``init_params(key) -> params``.
    optimizer: built with ``optax.inject_hyperparams`` so its hyperparameters
      are state. For Adam pass ``eps_root > 0`` (finite hypergradients).
    hyperparams: name -> :class:`Hyperparameter` (:func:`log`, :func:`logit`,
      :func:`scheduled`).
    horizon: inner steps before the parameters are re-initialised.
    validation_batch: the batch of the ``"validation"`` meta-loss.
    meta_loss: ``"validation"``: ``loss_fn(params_after_step,
      validation_batch)``; ``"train"``: the step's minibatch loss before the update.
    param_groups: ``param_groups(params) -> pytree of str labels`` for
      per-group entries; default: one group per top-level entry of params.
    validation_batch_size: if given, each step's ``"validation"`` meta-loss
      reads this many examples of ``validation_batch`` drawn (with replacement)
      with the step's key: an unbiased, cheaper estimate of the full one, as
      OHO's validation minibatches.

  Returns:
    The system; its state is :class:`OptaxState`.
  """
  if meta_loss not in ("validation", "train"):
    raise ValueError(f"meta_loss must be 'validation' or 'train', got {meta_loss!r}")
  if meta_loss == "validation" and validation_batch is None:
    raise ValueError("meta_loss='validation' needs a validation_batch")
  if validation_batch_size is not None and (
      isinstance(validation_batch_size, bool) or not isinstance(validation_batch_size, int)
      or validation_batch_size < 1):
    raise ValueError(f"validation_batch_size must be a positive int, got "
                     f"{validation_batch_size!r}")
  if not hyperparams:
    raise ValueError("hyperparams is empty: name at least one hyperparameter to tune")
  for name, h in hyperparams.items():
    if not isinstance(h, Hyperparameter):
      raise ValueError(f"hyperparams[{name!r}] must be a unrolled.Hyperparameter "
                       "(made by unrolled.log, unrolled.logit or unrolled.scheduled)")
  label_fn = param_groups or _default_groups
  params_shape = jax.eval_shape(init_params, jax.random.key(0))
  labels = label_fn(params_shape)
  groups = list(dict.fromkeys(jax.tree.leaves(labels)))
  opt_shape = jax.eval_shape(optimizer.init, params_shape)
  if not hasattr(opt_shape, "hyperparams"):
    raise ValueError("optimizer must be built with optax.inject_hyperparams(...) so that its "
                     "hyperparameters are part of its state")
  opt_names = set(opt_shape.hyperparams)
  own = {INIT_SCALE} | ({WEIGHT_DECAY} - opt_names)
  for name in hyperparams:
    if name not in opt_names | own:
      raise ValueError(f"hyperparameter {name!r} is neither one of the optimiser's "
                       f"{sorted(opt_names)} nor one the adapter implements {sorted(own)}")
  in_optimizer = [n for n in hyperparams if n in opt_names]
  scheduled_by_optax = sorted(set(in_optimizer) & set(getattr(opt_shape, "hyperparams_states", {})))
  if scheduled_by_optax:
    raise ValueError(f"hyperparameter(s) {scheduled_by_optax} are optax schedules inside "
                     "inject_hyperparams: optax recomputes them from its step count every "
                     "update, so theta would have no effect. Pass a number there and tune a schedule with "
                     "unrolled.scheduled(...)")
  for name, h in hyperparams.items():
    if h.transform == "schedule":
      _check_schedule(name, h.schedule)
  grouped = any(hyperparams[n].per_group for n in in_optimizer)
  if grouped:
    opt = optax.multi_transform({g: optimizer for g in groups}, label_fn)
  else:
    opt = optimizer

  def per_leaf(value, params):
    """A per-group (G,) value as a pytree matching params; a scalar broadcasts."""
    if jnp.ndim(value) == 0:
      return jax.tree.map(lambda _: value, params)
    index = {g: i for i, g in enumerate(groups)}
    return jax.tree.map(lambda lab: value[index[lab]], label_fn(params))

  def set_hyperparams(opt_state, values):
    def cast(v, like):
      return jnp.asarray(v, jnp.result_type(like))

    if not grouped:
      return optax.tree.set(opt_state, **{
          n: cast(values[n], opt_state.hyperparams[n]) for n in in_optimizer})
    inner = {}
    for i, g in enumerate(groups):
      group_state = opt_state.inner_states[g]
      hp = group_state.inner_state.hyperparams
      inner[g] = optax.tree.set(group_state, **{
          n: cast(values[n][i] if hyperparams[n].per_group else values[n], hp[n])
          for n in in_optimizer})
    return opt_state._replace(inner_states=inner)

  def init(key, theta):
    params = init_params(key)
    if INIT_SCALE in hyperparams:
      scale = per_leaf(natural_values({INIT_SCALE: hyperparams[INIT_SCALE]}, theta, 0)[INIT_SCALE],
                       params)
      params = jax.tree.map(lambda p, s: (p * s).astype(p.dtype), params, scale)
    zero = jnp.zeros((), jax.tree.leaves(params)[0].dtype)
    return OptaxState(params, opt.init(params), jnp.zeros((), jnp.int32), zero)

  def step(state, theta, key):
    values = natural_values(hyperparams, theta, state.step)
    batch = sample_batch(key)
    train_loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    if WEIGHT_DECAY in hyperparams and WEIGHT_DECAY not in opt_names:
      wd = per_leaf(values[WEIGHT_DECAY], state.params)
      grads = jax.tree.map(lambda g, p, w: g + w * p, grads, state.params, wd)
    opt_state = set_hyperparams(state.opt_state, values)
    updates, opt_state = opt.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    opt_state = set_hyperparams(opt_state, jax.lax.stop_gradient(values))
    new_state = OptaxState(params, opt_state, state.step + 1,
                           jax.lax.stop_gradient(train_loss).astype(state.train_loss.dtype))
    loss = validation_loss(new_state, theta, key) if meta_loss == "validation" else train_loss
    return new_state, loss

  def validation_loss(state, theta, key):
    del theta  # the validation loss of the updated parameters
    if validation_batch_size is None:
      return loss_fn(state.params, validation_batch)
    size = jax.tree.leaves(validation_batch)[0].shape[0]
    # fold_in: the training minibatch stays the one sample_batch(key) always drew.
    idx = jax.random.randint(jax.random.fold_in(key, 1), (validation_batch_size,), 0, size)
    return loss_fn(state.params, jax.tree.map(lambda a: a[idx], validation_batch))

  # The validation loss is read off the new state: rtrl and uoro then differentiate it by
  # one reverse pass instead of one tangent per hyperparameter (see UnrolledSystem.meta_loss).
  return metaopt.UnrolledSystem(init, step, horizon,
                                validation_loss if meta_loss == "validation" else None)


def _check_schedule(name: str, schedule: Schedule) -> None:
  """A schedule must trace with its parameters traced (they are theta) and give a scalar."""
  if not isinstance(schedule, Schedule):
    raise ValueError(f"hyperparameter {name!r}: unrolled.scheduled takes an unrolled.schedules."
                     f"Schedule(params, fn, name), got {type(schedule).__name__}")
  try:
    out = jax.eval_shape(lambda p: schedule(p, jnp.zeros((), jnp.int32)), schedule.params)
  except jax.errors.ConcretizationTypeError as e:
    raise ValueError(
        f"hyperparameter {name!r}: schedule {schedule.name!r} branches in Python on the value of "
        f"its parameters, which are traced as theta ({type(e).__name__}); write it in pure jnp "
        "(jnp.where, not if), e.g. with unrolled.schedules") from None
  if out.shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(f"hyperparameter {name!r}: schedule {schedule.name!r} must give a float "
                     f"scalar, gives {out.dtype}{list(out.shape)}")


def num_groups(init_params: Callable, param_groups: Callable | None = None) -> int:
  """How many parameter groups per-group hyperparameters have for these parameters."""
  labels = (param_groups or _default_groups)(jax.eval_shape(init_params, jax.random.key(0)))
  return len(dict.fromkeys(jax.tree.leaves(labels)))


def optax_problem(*, loss_fn: Callable, sample_batch: Callable, init_params: Callable,
                  optimizer: optax.GradientTransformation,
                  hyperparams: Mapping[str, Hyperparameter], horizon: int,
                  validation_batch: Any = None, meta_loss: str = "validation",
                  param_groups: Callable | None = None,
                  validation_batch_size: int | None = None,
                  metrics: Callable[[Any], Mapping[str, Any]] | None = None,
                  description: str | None = None) -> Problem:
  """A user's optax training loop as an :class:`~unrolled.Problem`: ready for
  ``metaopt.tune``, :func:`~unrolled.tune_problem` and ``--problem=module:factory``.

  The system is :func:`optax_system` of the same arguments; theta starts at
  the spec's initial values (:func:`initial_theta`); ``hyperparameters(theta)``
  gives each value in natural units at inner step 0 and each schedule's curve
  over the horizon (``<name>_curve``, ``(G, horizon)`` per group, and
  ``<name>_knots``) for the progress lines and TensorBoard.

  Args:
    loss_fn: as for :func:`optax_system`, and so are ``sample_batch``,
      ``init_params``, ``optimizer``, ``hyperparams``, ``horizon``,
      ``validation_batch``, ``meta_loss``, ``param_groups`` and
      ``validation_batch_size``.
    metrics: ``metrics(params) -> dict`` of scalars of the trained parameters
      (e.g. validation accuracy), logged with ``train_loss`` and (given a
      validation batch) ``validation_loss``.
    description: one paragraph for the logs (default: what is tuned).

  Returns:
    The :class:`~unrolled.Problem`; ``num_params`` counts ``init_params``'s numbers.
  """
  if metrics is not None and not callable(metrics):
    raise ValueError(f"metrics must be a function of the parameters, got {type(metrics).__name__}")
  system = optax_system(loss_fn=loss_fn, sample_batch=sample_batch, init_params=init_params,
                        optimizer=optimizer, hyperparams=hyperparams, horizon=horizon,
                        validation_batch=validation_batch, meta_loss=meta_loss,
                        param_groups=param_groups, validation_batch_size=validation_batch_size)
  theta = initial_theta(hyperparams, num_groups(init_params, param_groups))
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      jax.eval_shape(init_params, jax.random.key(0))))

  def hyperparameters(th):
    out = natural_values(hyperparams, th, jnp.zeros((), jnp.int32))
    for name, h in hyperparams.items():
      if h.transform == "schedule":
        curve = jax.vmap(lambda t, n=name: natural_values({n: h}, th, t)[n])(jnp.arange(horizon))
        out[f"{name}_curve"] = jnp.moveaxis(curve, 0, -1)  # (horizon,) or (G, horizon)
        if h.schedule.knots is not None:
          out[f"{name}_knots"] = h.schedule.knots
    return out

  def evaluate(state):
    out = {"train_loss": state.train_loss}
    if validation_batch is not None:
      out["validation_loss"] = loss_fn(state.params, validation_batch)
    out.update(metrics(state.params) if metrics is not None else {})
    return out

  def validation_losses(state):
    # loss_fn averages over a batch: a batch of one example at a time gives each one's loss.
    one = lambda example: loss_fn(state.params, jax.tree.map(lambda x: x[None], example))
    return jax.vmap(one)(validation_batch)

  return Problem(
      system=system, theta=theta, hyperparameters=hyperparameters, evaluate=evaluate,
      num_params=num_params,
      validation_losses=None if validation_batch is None else validation_losses,
      description=description or (
          f"An optax training loop ({num_params} parameters, horizon {horizon}, meta-loss "
          f"{meta_loss}), tuning {', '.join(hyperparams)}."))
