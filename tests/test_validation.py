"""Bad options and bad theta fail with a ValueError that names the problem, before compute."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
import systems


@pytest.mark.parametrize("make", [
    lambda s: metaopt.full_bptt(s),
    lambda s: metaopt.tbptt(s, num_steps=2),
    lambda s: metaopt.rtrl(s, num_steps=2),
    lambda s: metaopt.uoro(s, num_steps=2),
    lambda s: metaopt.pes(s, num_steps=2, num_particles=2, sigma=0.1),
    lambda s: metaopt.truncated_es(s, num_steps=2, num_particles=2, sigma=0.1),
])
def test_integer_theta_is_refused_at_init(make):
  system, theta = systems.linear_init_dependent(horizon=6)
  est = make(system)
  bad = {"log_scale": jnp.int32(1), "drive": theta["drive"]}
  with pytest.raises(ValueError, match=r"theta.*log_scale.*int32"):
    est.init(jax.random.key(0), bad)
  with pytest.raises(ValueError, match="theta"):
    est.unroll(est.init(jax.random.key(0), theta), bad, jax.random.key(1))


def test_step_that_changes_the_state_shape_is_refused():
  system = metaopt.UnrolledSystem(
      init=lambda key, th: jnp.ones(3),
      step=lambda s, th, key: (jnp.concatenate([s, s]), jnp.sum(s)),
      horizon=2)
  with pytest.raises(ValueError, match="state"):
    metaopt.rtrl(system, num_steps=1).init(jax.random.key(0), jnp.float32(1.0))


def test_non_scalar_loss_is_refused():
  system = metaopt.UnrolledSystem(
      init=lambda key, th: jnp.ones(3), step=lambda s, th, key: (s, s), horizon=2)
  with pytest.raises(ValueError, match="scalar loss"):
    metaopt.tbptt(system, num_steps=1).init(jax.random.key(0), jnp.float32(1.0))


@pytest.mark.parametrize("make", [
    lambda s: metaopt.rtrl(s, num_steps=2),
    lambda s: metaopt.uoro(s, num_steps=2, rank=2, rho="one_step_variance", shaping="diagonal"),
    lambda s: metaopt.forward_gradient(s, num_steps=2),
    lambda s: metaopt.reinforce(s, num_steps=2, sigma=0.01),
    lambda s: metaopt.pes(s, num_steps=2, num_particles=2, sigma=0.01),
])
def test_state_and_loss_dtypes_other_than_theta_are_kept(make):
  """bf16 state and float32 loss with float32 theta: no dtype promotion breaks the scan carry."""
  def init(key, th):
    return (jnp.ones(3) * th["a"]).astype(jnp.bfloat16)

  def step(s, th, key):
    s = (0.9 * s.astype(jnp.float32) + th["a"]).astype(jnp.bfloat16)
    return s, jnp.sum(s.astype(jnp.float32) ** 2)

  system = metaopt.UnrolledSystem(init, step, horizon=4)
  theta = {"a": jnp.float32(0.1)}
  est = make(system)
  state = est.init(jax.random.key(0), theta)
  for i in range(3):
    state, grad, _ = jax.jit(est.unroll)(state, theta, jax.random.key(i))
    assert grad["a"].dtype == jnp.float32 and bool(jnp.isfinite(grad["a"]))


# ----------------------------------------------------------------------------
# The bad-call table: every public function that takes user input, called the
# way a careless or hostile user would. Each call must raise a one-line
# ValueError naming the argument, before any compute.

SYSTEM, THETA = systems.linear_init_dependent(horizon=6)
KEY, KEY1 = jax.random.key(0), jax.random.key(1)
NAN_THETA = {"log_scale": jnp.float32(jnp.nan), "drive": THETA["drive"]}
INF_THETA = {"log_scale": jnp.float32(0.2), "drive": jnp.array([0.1, jnp.inf, 0.3])}
INT_THETA = {"log_scale": jnp.int32(1), "drive": THETA["drive"]}


def _elementwise():
  cell = metaopt.recurrent.ElementwiseCell(
      initial=lambda p: jnp.zeros(1),
      step=lambda h, p, x: h + p["rate"] * (jnp.tanh(p["v"] @ x) - h),
      output=lambda h, p, x: h)
  system = metaopt.recurrent.elementwise_system(
      cell, stream_init=lambda key: jnp.float32(0.0),
      observe=lambda t, key: (t + 1, jnp.array([jnp.sin(t), 1.0]), jnp.cos(t)),
      readout_loss=lambda r, o, y: (r @ o[:, 0] - y) ** 2, horizon=6)
  theta = {"cell": {"rate": jnp.full(3, 0.3), "v": jnp.ones((3, 2))}, "readout": jnp.ones(3)}
  return system, theta


# Every windowed estimator, as (make(system), system, theta).
ESTIMATORS = {
    "full_bptt": (lambda s: metaopt.full_bptt(s), SYSTEM, THETA),
    "tbptt": (lambda s: metaopt.tbptt(s, num_steps=2), SYSTEM, THETA),
    "rtrl": (lambda s: metaopt.rtrl(s, num_steps=2), SYSTEM, THETA),
    "uoro": (lambda s: metaopt.uoro(s, num_steps=2), SYSTEM, THETA),
    "pes": (lambda s: metaopt.pes(s, num_steps=2, num_particles=2, sigma=0.1), SYSTEM, THETA),
    "nres": (lambda s: metaopt.nres(s, num_steps=2, num_particles=2, sigma=0.1), SYSTEM, THETA),
    "truncated_es": (lambda s: metaopt.truncated_es(s, num_steps=2, num_particles=2, sigma=0.1),
                     SYSTEM, THETA),
    "forward_gradient": (lambda s: metaopt.forward_gradient(s, num_steps=2), SYSTEM, THETA),
    "reinforce": (lambda s: metaopt.reinforce(s, num_steps=2, sigma=0.1), SYSTEM, THETA),
    "rtrl_elementwise": (lambda s: metaopt.rtrl_elementwise(s, num_steps=2), *_elementwise()),
}


def _unroll(name, theta=None, key=KEY1, *, state=None, wrap=lambda f: f):
  make, system, good = ESTIMATORS[name]
  est = make(system)
  state = est.init(KEY, good) if state is None else state
  return wrap(est.unroll)(state, good if theta is None else theta, key)


def _tuner(**options):
  return metaopt.tuner(metaopt.rtrl(SYSTEM, num_steps=2), optax.sgd(0.1), **options)


def _tuner_state():
  return _tuner().init(KEY, THETA)


def _windowed(state_type=metaopt.TBPTTState, **options):
  args = dict(num_steps=2, start=lambda th, keys, k: SYSTEM.init(k, th),
              window=lambda begin, th, keys: ((begin(th),), th, {"loss": 0.0}))
  return metaopt.windowed(SYSTEM, state_type, **{**args, **options})


def _system(horizon):
  return metaopt.UnrolledSystem(SYSTEM.init, SYSTEM.step, horizon)


def _shuffled(theta):
  return {"log_scale": theta["drive"][:1].reshape(()), "drive": theta["drive"],
          "extra": jnp.float32(0.0)}


NAN, INF = float("nan"), float("inf")
BAD_CALLS = [
    # Estimator constructors: counts, floats, flags, the system.
    ("tbptt_num_steps_0", lambda: metaopt.tbptt(SYSTEM, num_steps=0), "num_steps"),
    ("tbptt_num_steps_not_dividing", lambda: metaopt.tbptt(SYSTEM, num_steps=4), "num_steps"),
    ("tbptt_num_steps_bool", lambda: metaopt.tbptt(SYSTEM, num_steps=True), "num_steps"),
    ("tbptt_num_steps_float", lambda: metaopt.tbptt(SYSTEM, num_steps=2.0), "num_steps"),
    ("tbptt_num_steps_str", lambda: metaopt.tbptt(SYSTEM, num_steps="2"), "num_steps"),
    ("tbptt_num_steps_none", lambda: metaopt.tbptt(SYSTEM, num_steps=None), "num_steps"),
    ("tbptt_remat_str", lambda: metaopt.tbptt(SYSTEM, num_steps=2, remat="yes"), "remat"),
    ("full_bptt_system_none", lambda: metaopt.full_bptt(None), "system"),
    ("full_bptt_horizon_float", lambda: metaopt.full_bptt(_system(6.0)), "horizon"),
    ("full_bptt_horizon_0", lambda: metaopt.full_bptt(_system(0)), "horizon"),
    ("rtrl_num_steps_negative", lambda: metaopt.rtrl(SYSTEM, num_steps=-1), "num_steps"),
    ("rtrl_system_tuple", lambda: metaopt.rtrl((1, 2, 3), num_steps=2), "system"),
    ("rtrl_spread_copies_str", lambda: metaopt.rtrl(SYSTEM, num_steps=2, spread_copies="no"),
     "spread_copies"),
    ("uoro_num_steps_float", lambda: metaopt.uoro(SYSTEM, num_steps=2.0), "num_steps"),
    ("uoro_rank_0", lambda: metaopt.uoro(SYSTEM, num_steps=2, rank=0), "rank"),
    ("uoro_rank_float", lambda: metaopt.uoro(SYSTEM, num_steps=2, rank=1.5), "rank"),
    ("uoro_rank_bool", lambda: metaopt.uoro(SYSTEM, num_steps=2, rank=True), "rank"),
    ("uoro_rho_unknown", lambda: metaopt.uoro(SYSTEM, num_steps=2, rho="bogus"), "rho"),
    ("uoro_noise_unknown", lambda: metaopt.uoro(SYSTEM, num_steps=2, noise="uniform"), "noise"),
    ("uoro_epsilon_nan", lambda: metaopt.uoro(SYSTEM, num_steps=2, epsilon=NAN), "epsilon"),
    ("uoro_epsilon_str", lambda: metaopt.uoro(SYSTEM, num_steps=2, epsilon="1e-7"), "epsilon"),
    ("uoro_fixed_rho_inf", lambda: metaopt.uoro(SYSTEM, num_steps=2, fixed_rho=INF),
     "fixed_rho"),
    ("uoro_energy_decay_1", lambda: metaopt.uoro(SYSTEM, num_steps=2, energy_decay=1.0),
     "energy_decay"),
    ("uoro_energy_decay_str", lambda: metaopt.uoro(SYSTEM, num_steps=2, energy_decay="0.9"),
     "energy_decay"),
    ("pes_num_particles_odd",
     lambda: metaopt.pes(SYSTEM, num_steps=2, num_particles=3, sigma=0.1), "num_particles"),
    ("pes_num_particles_0",
     lambda: metaopt.pes(SYSTEM, num_steps=2, num_particles=0, sigma=0.1), "num_particles"),
    ("pes_num_particles_negative",
     lambda: metaopt.pes(SYSTEM, num_steps=2, num_particles=-2, sigma=0.1), "num_particles"),
    ("pes_num_particles_float",
     lambda: metaopt.pes(SYSTEM, num_steps=2, num_particles=4.0, sigma=0.1), "num_particles"),
    ("pes_num_particles_bool",
     lambda: metaopt.pes(SYSTEM, num_steps=2, num_particles=True, sigma=0.1), "num_particles"),
    ("pes_sigma_0", lambda: metaopt.pes(SYSTEM, num_steps=2, num_particles=4, sigma=0.0), "sigma"),
    ("pes_sigma_nan", lambda: metaopt.pes(SYSTEM, num_steps=2, num_particles=4, sigma=NAN),
     "sigma"),
    ("pes_sigma_inf", lambda: metaopt.pes(SYSTEM, num_steps=2, num_particles=4, sigma=INF),
     "sigma"),
    ("pes_sigma_bool", lambda: metaopt.pes(SYSTEM, num_steps=2, num_particles=4, sigma=True),
     "sigma"),
    ("pes_sigma_str", lambda: metaopt.pes(SYSTEM, num_steps=2, num_particles=4, sigma="0.1"),
     "sigma"),
    ("pes_sigma_none", lambda: metaopt.pes(SYSTEM, num_steps=2, num_particles=4, sigma=None),
     "sigma"),
    ("nres_num_particles_1",
     lambda: metaopt.nres(SYSTEM, num_steps=2, num_particles=1, sigma=0.1), "num_particles"),
    ("nres_sigma_negative",
     lambda: metaopt.nres(SYSTEM, num_steps=2, num_particles=2, sigma=-0.1), "sigma"),
    ("truncated_es_sigma_negative",
     lambda: metaopt.truncated_es(SYSTEM, num_steps=2, num_particles=4, sigma=-1.0), "sigma"),
    ("truncated_es_num_steps_not_dividing",
     lambda: metaopt.truncated_es(SYSTEM, num_steps=5, num_particles=4, sigma=1.0), "num_steps"),
    ("forward_gradient_num_steps_0", lambda: metaopt.forward_gradient(SYSTEM, num_steps=0),
     "num_steps"),
    ("reinforce_sigma_0", lambda: metaopt.reinforce(SYSTEM, num_steps=2, sigma=0.0), "sigma"),
    ("reinforce_sigma_nan", lambda: metaopt.reinforce(SYSTEM, num_steps=2, sigma=NAN), "sigma"),
    ("reinforce_baseline_str",
     lambda: metaopt.reinforce(SYSTEM, num_steps=2, sigma=0.1, baseline="no"), "baseline"),
    ("rtrl_elementwise_plain_system", lambda: metaopt.rtrl_elementwise(SYSTEM, num_steps=2),
     "system"),
    ("rtrl_elementwise_num_steps_0",
     lambda: metaopt.rtrl_elementwise(_elementwise()[0], num_steps=0), "num_steps"),
    # Estimator init: the key and theta.
    ("init_key_0", lambda: metaopt.rtrl(SYSTEM, num_steps=2).init(0, THETA), "key"),
    ("init_key_none", lambda: metaopt.rtrl(SYSTEM, num_steps=2).init(None, THETA), "key"),
    ("init_key_float", lambda: metaopt.rtrl(SYSTEM, num_steps=2).init(jnp.zeros(2), THETA),
     "key"),
    ("init_key_batch", lambda: metaopt.rtrl(SYSTEM, num_steps=2).init(
        jax.random.split(KEY, 3), THETA), "key"),
    ("init_key_uint32_wrong_shape", lambda: metaopt.rtrl(SYSTEM, num_steps=2).init(
        jnp.zeros(3, jnp.uint32), THETA), "key"),
    ("init_key_rbg", lambda: metaopt.rtrl(SYSTEM, num_steps=2).init(
        jax.random.key(0, impl="rbg"), THETA), "key"),
    ("init_theta_nan", lambda: metaopt.tbptt(SYSTEM, num_steps=2).init(KEY, NAN_THETA),
     "theta"),
    ("init_theta_inf", lambda: metaopt.pes(SYSTEM, num_steps=2, num_particles=2, sigma=0.1).init(
        KEY, INF_THETA), "theta"),
    ("init_theta_int", lambda: metaopt.rtrl(SYSTEM, num_steps=2).init(KEY, INT_THETA), "theta"),
    ("init_theta_empty", lambda: metaopt.rtrl(SYSTEM, num_steps=2).init(KEY, {}), "theta"),
    ("init_theta_str", lambda: metaopt.rtrl(SYSTEM, num_steps=2).init(
        KEY, {"log_scale": "0.2", "drive": THETA["drive"]}), "theta"),
    ("init_theta_missing_key", lambda: metaopt.rtrl(SYSTEM, num_steps=2).init(
        KEY, {"drive": THETA["drive"]}), "theta"),
    # Estimator unroll: theta against the state's, the key, the state itself.
    ("unroll_theta_missing_key", lambda: _unroll("tbptt", {"drive": THETA["drive"]}), "theta"),
    ("unroll_theta_extra_key", lambda: _unroll("rtrl", _shuffled(THETA)), "theta"),
    ("unroll_theta_wrong_shape", lambda: _unroll(
        "uoro", {"log_scale": THETA["log_scale"], "drive": jnp.zeros(4)}), "theta"),
    ("unroll_theta_broadcastable_shape", lambda: _unroll(
        "tbptt", {"log_scale": THETA["log_scale"], "drive": jnp.float32(0.1)}), "theta"),
    ("unroll_theta_dtype", lambda: _unroll(
        "pes", jax.tree.map(lambda x: x.astype(jnp.bfloat16), THETA)), "theta"),
    ("unroll_theta_int", lambda: _unroll("rtrl", INT_THETA), "theta"),
    ("unroll_theta_under_jit", lambda: _unroll(
        "tbptt", {"log_scale": THETA["log_scale"], "drive": jnp.zeros(4)}, wrap=jax.jit),
     "theta"),
    ("unroll_key_0", lambda: _unroll("rtrl", key=0), "key"),
    ("unroll_key_none", lambda: _unroll("tbptt", key=None), "key"),
    ("unroll_key_batch", lambda: _unroll("uoro", key=jax.random.split(KEY, 2)), "key"),
    ("unroll_state_of_another_estimator", lambda: _unroll(
        "rtrl", state=metaopt.tbptt(SYSTEM, num_steps=2).init(KEY, THETA)), "state"),
    ("unroll_batched_state_without_vmap", lambda: _unroll(
        "rtrl", state=jax.vmap(metaopt.rtrl(SYSTEM, num_steps=2).init, (0, None))(
            jax.random.split(KEY, 2), THETA)), "state"),
    ("unroll_state_none", lambda: _unroll("tbptt", state=(None,)), "state"),
    # tuner: options, init, update, run.
    ("tuner_num_chains_0", lambda: _tuner(num_chains=0), "num_chains"),
    ("tuner_num_chains_float", lambda: _tuner(num_chains=2.0), "num_chains"),
    ("tuner_num_chains_bool", lambda: _tuner(num_chains=True), "num_chains"),
    ("tuner_max_grad_norm_0", lambda: _tuner(max_grad_norm=0.0), "max_grad_norm"),
    ("tuner_max_grad_norm_nan", lambda: _tuner(max_grad_norm=NAN), "max_grad_norm"),
    ("tuner_max_grad_norm_str", lambda: _tuner(max_grad_norm="1"), "max_grad_norm"),
    ("tuner_ema_decay_1", lambda: _tuner(ema_decay=1.0), "ema_decay"),
    ("tuner_ema_decay_nan", lambda: _tuner(ema_decay=NAN), "ema_decay"),
    ("tuner_ema_decay_str", lambda: _tuner(ema_decay="0.9"), "ema_decay"),
    ("tuner_spread_chains_str", lambda: _tuner(spread_chains="yes"), "spread_chains"),
    ("tuner_estimator_str", lambda: metaopt.tuner("rtrl", optax.sgd(0.1)), "estimator"),
    ("tuner_meta_optimizer_float",
     lambda: metaopt.tuner(metaopt.rtrl(SYSTEM, num_steps=2), 0.1), "meta_optimizer"),
    ("tuner_init_key_0", lambda: _tuner().init(0, THETA), "key"),
    ("tuner_init_key_none", lambda: _tuner().init(None, THETA), "key"),
    ("tuner_init_theta_nan", lambda: _tuner().init(KEY, NAN_THETA), "theta"),
    ("tuner_init_theta_inf", lambda: _tuner().init(KEY, INF_THETA), "theta"),
    ("tuner_init_theta_int", lambda: _tuner().init(KEY, INT_THETA), "theta"),
    ("tuner_update_state_none", lambda: _tuner().update(None), "state"),
    ("tuner_update_theta_replaced", lambda: _tuner().update(_tuner_state()._replace(
        theta={"log_scale": THETA["log_scale"], "drive": jnp.zeros(4)})), "theta"),
    ("tuner_run_num_updates_float", lambda: _tuner().run(_tuner_state(), 2.0), "num_updates"),
    ("tuner_run_num_updates_negative", lambda: _tuner().run(_tuner_state(), -1), "num_updates"),
    ("tuner_run_num_updates_bool", lambda: _tuner().run(_tuner_state(), True), "num_updates"),
    # The registry: specs and shared options.
    ("get_estimator_unknown", lambda: metaopt.get_estimator("bogus", SYSTEM, num_steps=2),
     "estimator"),
    ("get_estimator_unknown_option",
     lambda: metaopt.get_estimator("uoro[foo=1]", SYSTEM, num_steps=2), "foo"),
    ("get_estimator_rank_0", lambda: metaopt.get_estimator("uoro[rank=0]", SYSTEM, num_steps=2),
     "rank"),
    ("get_estimator_unclosed", lambda: metaopt.get_estimator("uoro[rank=2", SYSTEM, num_steps=2),
     "spec"),
    ("get_estimator_option_without_value",
     lambda: metaopt.get_estimator("uoro[rank]", SYSTEM, num_steps=2), "rank"),
    ("get_estimator_duplicate_option",
     lambda: metaopt.get_estimator("uoro[rank=1,rank=2]", SYSTEM, num_steps=2), "rank"),
    ("get_estimator_spec_none", lambda: metaopt.get_estimator(None, SYSTEM, num_steps=2), "spec"),
    ("get_estimator_system_none", lambda: metaopt.get_estimator("rtrl", None, num_steps=2),
     "system"),
    ("get_estimator_num_steps_0", lambda: metaopt.get_estimator("rtrl", SYSTEM, num_steps=0),
     "num_steps"),
    ("get_estimator_num_particles_odd",
     lambda: metaopt.get_estimator("pes", SYSTEM, num_steps=2, num_particles=3), "num_particles"),
    ("get_estimator_spread_copies_str",
     lambda: metaopt.get_estimator("pes", SYSTEM, num_steps=2, spread_copies="no"),
     "spread_copies"),
    ("parse_spec_int", lambda: metaopt.parse_spec(3), "spec"),
    ("parse_spec_empty_name", lambda: metaopt.parse_spec("[rank=2]"), "spec"),
    ("estimator_info_unknown", lambda: metaopt.estimator_info("nope"), "estimator"),
    ("estimator_info_none", lambda: metaopt.estimator_info(None), "spec"),
    # windowed.
    ("windowed_state_type_dict", lambda: _windowed(dict), "state_type"),
    ("windowed_start_none", lambda: _windowed(start=None), "start"),
    ("windowed_window_none", lambda: _windowed(window=None), "window"),
    ("windowed_num_steps_not_dividing", lambda: _windowed(num_steps=4), "num_steps"),
    # Whole-horizon helpers.
    ("exact_grad_num_steps_not_dividing", lambda: metaopt.exact_grad(
        SYSTEM, THETA, KEY, num_steps=4, num_windows=3), "num_steps"),
    ("exact_grad_num_windows_0", lambda: metaopt.exact_grad(
        SYSTEM, THETA, KEY, num_steps=2, num_windows=0), "num_windows"),
    ("exact_grad_num_windows_float", lambda: metaopt.exact_grad(
        SYSTEM, THETA, KEY, num_steps=2, num_windows=3.0), "num_windows"),
    ("exact_grad_key_0", lambda: metaopt.exact_grad(
        SYSTEM, THETA, 0, num_steps=2, num_windows=3), "key"),
    ("exact_grad_theta_int", lambda: metaopt.exact_grad(
        SYSTEM, INT_THETA, KEY, num_steps=2, num_windows=3), "theta"),
    ("sum_window_grads_num_windows_0", lambda: metaopt.sum_window_grads(
        metaopt.rtrl(SYSTEM, num_steps=2), THETA, KEY, num_windows=0), "num_windows"),
    ("sum_window_grads_num_windows_float", lambda: metaopt.sum_window_grads(
        metaopt.rtrl(SYSTEM, num_steps=2), THETA, KEY, num_windows=1.5), "num_windows"),
    ("sum_window_grads_key_none", lambda: metaopt.sum_window_grads(
        metaopt.rtrl(SYSTEM, num_steps=2), THETA, None, num_windows=3), "key"),
    ("sum_window_grads_estimator_none", lambda: metaopt.sum_window_grads(
        None, THETA, KEY, num_windows=3), "estimator"),
    ("evaluate_horizon_key_0", lambda: metaopt.horizon.evaluate_horizon(SYSTEM, THETA, 0), "key"),
    ("evaluate_horizon_evaluate_str",
     lambda: metaopt.horizon.evaluate_horizon(SYSTEM, THETA, KEY, evaluate="loss"), "evaluate"),
    ("evaluate_horizon_theta_int", lambda: metaopt.horizon.evaluate_horizon(SYSTEM, INT_THETA, KEY),
     "theta"),
    ("evaluate_horizon_system_none", lambda: metaopt.horizon.evaluate_horizon(None, THETA, KEY),
     "system"),
    ("window_keys_num_windows_0", lambda: metaopt.horizon.window_keys(KEY, 0), "num_windows"),
    ("window_keys_key_0", lambda: metaopt.horizon.window_keys(0, 2), "key"),
    ("split_window_key_num_steps_0", lambda: metaopt.horizon.split_window_key(KEY, 0), "num_steps"),
]
# Theta that does not match the state's, and a bad key, at every estimator's unroll.
for _name, (_make, _system_, _theta) in ESTIMATORS.items():
  _leaves, _treedef = jax.tree.flatten(_theta)
  BAD_CALLS += [
      (f"{_name}_unroll_theta_structure",
       lambda n=_name, t=_theta: _unroll(n, {"theta": t}), "theta"),
      (f"{_name}_unroll_theta_shape",
       lambda n=_name, l=_leaves, d=_treedef: _unroll(
           n, d.unflatten([jnp.concatenate([x.ravel(), x.ravel()]) for x in l])), "theta"),
      (f"{_name}_unroll_key_0", lambda n=_name: _unroll(n, key=0), "key"),
  ]


@pytest.mark.parametrize("call, argument", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_call_raises_a_one_line_value_error_naming_the_argument(call, argument):
  with pytest.raises(ValueError, match=argument) as error:
    call()
  assert "\n" not in str(error.value), str(error.value)


def test_bad_calls_cover_every_function_that_takes_user_input():
  names = {c[0] for c in BAD_CALLS}
  for public in ("tbptt", "full_bptt", "rtrl", "uoro", "pes", "nres", "truncated_es",
                 "forward_gradient", "reinforce", "rtrl_elementwise", "get_estimator",
                 "parse_spec", "estimator_info", "tuner", "windowed", "exact_grad",
                 "sum_window_grads", "evaluate_horizon", "window_keys", "split_window_key"):
    assert any(n.startswith(public) for n in names), public
  assert len(BAD_CALLS) >= 42


# Good variants: numpy integers and floats for counts and scales, old-style uint32 keys,
# Python scalars for float leaves of theta.
GOOD_CALLS = [
    ("tbptt_num_steps_np_int64", lambda: metaopt.tbptt(SYSTEM, num_steps=np.int64(2))),
    ("rtrl_num_steps_np_int32", lambda: metaopt.rtrl(SYSTEM, num_steps=np.int32(3))),
    ("pes_np_counts_and_sigma", lambda: metaopt.pes(
        SYSTEM, num_steps=np.int64(2), num_particles=np.int64(4), sigma=np.float32(0.1))),
    ("nres_np_num_particles", lambda: metaopt.nres(
        SYSTEM, num_steps=2, num_particles=np.int64(2), sigma=np.float64(0.1))),
    ("uoro_np_rank", lambda: metaopt.uoro(SYSTEM, num_steps=np.int64(2), rank=np.int64(2))),
    ("reinforce_np_bool_baseline", lambda: metaopt.reinforce(
        SYSTEM, num_steps=2, sigma=0.1, baseline=np.bool_(False))),
    ("system_horizon_np_int64", lambda: metaopt.full_bptt(_system(np.int64(6)))),
    ("tuner_np_num_chains", lambda: _tuner(num_chains=np.int64(2)).init(KEY, THETA)),
    ("tuner_run_np_num_updates", lambda: _tuner().run(_tuner_state(), np.int64(2))),
    ("get_estimator_np_options", lambda: metaopt.get_estimator(
        "pes", SYSTEM, num_steps=np.int64(2), num_particles=np.int64(4), sigma=np.float32(0.1))),
    ("exact_grad_np_counts", lambda: metaopt.exact_grad(
        SYSTEM, THETA, KEY, num_steps=np.int64(2), num_windows=np.int64(3))),
    ("sum_window_grads_np_num_windows", lambda: metaopt.sum_window_grads(
        metaopt.rtrl(SYSTEM, num_steps=2), THETA, KEY, num_windows=np.int64(3))),
    ("init_and_unroll_old_style_key", lambda: _unroll(
        "rtrl", key=jax.random.PRNGKey(1), state=metaopt.rtrl(SYSTEM, num_steps=2).init(
            jax.random.PRNGKey(0), THETA))),
    ("tuner_old_style_key", lambda: _tuner().update(_tuner().init(jax.random.PRNGKey(0), THETA))),
    ("unroll_python_float_leaf", lambda: _unroll("tbptt", {"log_scale": 0.2,
                                                           "drive": THETA["drive"]})),
    ("unroll_numpy_leaves", lambda: _unroll("uoro", jax.tree.map(np.asarray, THETA))),
    ("window_keys_np_int64", lambda: metaopt.horizon.window_keys(KEY, np.int64(2))),
]


@pytest.mark.parametrize("call", [c[1] for c in GOOD_CALLS], ids=[c[0] for c in GOOD_CALLS])
def test_good_variants_are_accepted(call):
  call()


def test_a_theta_mismatch_at_unroll_is_refused_before_the_window_is_traced():
  traced = []

  def step(s, th, key):
    traced.append(1)
    return SYSTEM.step(s, th, key)

  system = metaopt.UnrolledSystem(SYSTEM.init, step, SYSTEM.horizon)
  for name in ("tbptt", "rtrl", "pes"):
    est = ESTIMATORS[name][0](system)
    state = est.init(KEY, THETA)
    traced.clear()
    with pytest.raises(ValueError, match="theta"):
      jax.jit(est.unroll)(state, {"log_scale": THETA["log_scale"], "drive": jnp.zeros(2)}, KEY1)
    assert not traced, name


def test_theta_is_checked_against_each_chain_under_vmap():
  est = metaopt.rtrl(SYSTEM, num_steps=2)
  states = jax.vmap(est.init, (0, None))(jax.random.split(KEY, 3), THETA)
  unroll = jax.vmap(est.unroll, (0, None, 0))
  unroll(states, THETA, jax.random.split(KEY1, 3))  # the right theta goes through
  with pytest.raises(ValueError, match=r"theta\['drive'\]"):
    unroll(states, {"log_scale": THETA["log_scale"], "drive": jnp.zeros(5)},
           jax.random.split(KEY1, 3))


def test_a_nan_theta_under_a_jitted_tuner_init_is_skipped_at_the_first_update():
  """Under jit theta is abstract, so init cannot look at its values; the first update's
  non-finite check catches it instead (every step is skipped and counted)."""
  t = _tuner()
  state = jax.jit(t.init)(KEY, NAN_THETA)
  state, infos = jax.jit(t.run, static_argnums=1)(state, 2)
  assert int(state.num_skipped) == 2 and not np.any(infos["finite"])
