"""Schedules: values, knots, and gradients under jit with traced parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unrolled import schedules

HORIZON = 50

ALL = {
    "constant": lambda: schedules.constant(0.1),
    "exponential_decay": lambda: schedules.exponential_decay(0.1, 0.9),
    "linear_interpolation": lambda: schedules.linear_interpolation(0.1, 0.01, horizon=HORIZON),
    "warmup_cosine": lambda: schedules.warmup_cosine(0.1, 0.01, warmup_steps=5, horizon=HORIZON),
    "piecewise_linear_log": lambda: schedules.piecewise_linear_log(0.1, num_knots=6,
                                                                   horizon=HORIZON),
    "per_step": lambda: schedules.per_step(0.1, horizon=HORIZON),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_gradient_under_jit_matches_finite_differences(name):
  with jax.enable_x64(True):
    s = ALL[name]()
    params = jnp.asarray(s.params, jnp.float64) + 0.1 * jnp.arange(s.params.size).reshape(
        s.params.shape)
    total = lambda p: jnp.sum(s.curve(p, HORIZON) ** 2)
    grad = jax.jit(jax.grad(total))(params)
    flat = params.reshape(-1)
    h = 1e-6
    fd = [(total((flat.at[i].add(h)).reshape(params.shape))
           - total((flat.at[i].add(-h)).reshape(params.shape))) / (2 * h) for i in range(flat.size)]
    assert np.all(np.isfinite(fd)), fd  # assert_allclose takes NaN for equal to NaN
    np.testing.assert_allclose(np.ravel(grad), fd, rtol=1e-6, atol=1e-7)


def test_values():
  t = jnp.arange(HORIZON)
  np.testing.assert_allclose(ALL["constant"]().curve(ALL["constant"]().params, 3), 0.1, rtol=1e-6)
  s = ALL["exponential_decay"]()
  np.testing.assert_allclose(s.curve(s.params, HORIZON), 0.1 * 0.9 ** t, rtol=1e-4)
  s = ALL["linear_interpolation"]()
  np.testing.assert_allclose(s.curve(s.params, HORIZON), 0.1 + (0.01 - 0.1) * t / HORIZON,
                             rtol=1e-5)
  s = ALL["warmup_cosine"]()
  curve = s.curve(s.params, HORIZON)
  assert int(jnp.argmax(curve)) == 5 and float(curve[5]) == pytest.approx(0.1, rel=1e-5)
  assert np.all(np.diff(curve[:6]) > 0) and np.all(np.diff(curve[5:]) < 0)
  assert float(curve[-1]) == pytest.approx(0.01, rel=0.05)


def test_piecewise_linear_knots_sit_at_the_right_steps():
  s = schedules.piecewise_linear_log(0.1, num_knots=6, horizon=HORIZON)
  np.testing.assert_array_equal(s.knots, np.linspace(0, HORIZON - 1, 6).astype(np.float32))
  params = jnp.log(jnp.array([1.0, 0.5, 0.25, 0.5, 1.0, 2.0]))
  curve = np.asarray(s.curve(params, HORIZON))
  knots = np.round(s.knots).astype(int)
  exact = knots == s.knots  # 0, 9.8, ... only integer knots land on a step
  np.testing.assert_allclose(curve[knots[exact]], np.exp(params)[exact], rtol=1e-5)
  # Between two knots the log rate is linear: geometric interpolation.
  mid = 0.5 * (s.knots[0] + s.knots[1])
  assert float(s(params, jnp.float32(mid))) == pytest.approx(np.sqrt(1.0 * 0.5), rel=1e-5)
  # A knot's parameter moves the rate only within its two neighbouring segments.
  g = jax.grad(lambda p: s(p, 30))(params)
  assert np.count_nonzero(np.asarray(g)) == 2


def test_bad_schedule_options():
  with pytest.raises(ValueError, match="num_knots"):
    schedules.piecewise_linear_log(0.1, num_knots=1, horizon=10)
  with pytest.raises(ValueError, match="warmup_steps"):
    schedules.warmup_cosine(0.1, 0.01, warmup_steps=10, horizon=10)
  with pytest.raises(ValueError, match="decay_rate"):
    schedules.exponential_decay(0.1, 1.5)
  with pytest.raises(ValueError, match="positive"):
    schedules.constant(-1.0)
