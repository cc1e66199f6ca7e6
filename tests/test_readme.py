"""The README's example runs as written, and its rtrl line equals the exact gradient."""

import contextlib
import io
import pathlib
import re

import numpy as np


def test_readme_example_runs_and_rtrl_is_exact():
  readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
  example = re.search(r"## Example\n\n```python\n(.*?)```", readme, re.S).group(1)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(example, "README example", "exec"), {})
  lines = out.getvalue().strip().splitlines()
  assert len(lines) == 4
  parse = lambda text: np.array([float(x) for x in re.findall(r"-?\d+\.\d*(?:e-?\d+)?", text)])
  rtrl, exact = lines[0].split("exact:")
  rtrl, exact = parse(rtrl), parse(exact)
  # Two empty parses (a changed print format) would compare equal.
  assert rtrl.size == exact.size > 0 and np.all(np.isfinite(exact)), lines[0]
  np.testing.assert_allclose(rtrl, exact, rtol=1e-4)


def test_readme_worked_estimator_runs_and_a_whole_horizon_window_is_exact():
  """"Adding an estimator": the worked example is a working estimator built on metaopt.windowed."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import metaopt  # pylint: disable=g-import-not-at-top
  readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
  section = readme.split("## Adding an estimator", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  scope = {}
  exec(compile(code, "README worked estimator", "exec"), scope)
  assert scope["row"].make is scope["finite_differences"] and scope["row"].target == "biased"
  system = metaopt.UnrolledSystem(init=lambda key, th: jnp.ones(2) * th,
                                  step=lambda s, th, key: (0.5 * s + th, jnp.sum(s ** 2)),
                                  horizon=4)
  theta = jnp.array([0.3, -0.2])
  key = jax.random.key(0)
  exact = metaopt.exact_grad(system, theta, key, num_steps=4, num_windows=2)
  whole = scope["finite_differences"](system, num_steps=4)
  got = metaopt.sum_window_grads(whole, theta, key, num_windows=2)  # two horizons, resets
  np.testing.assert_allclose(got, exact, rtol=1e-3)
  truncated = scope["finite_differences"](system, num_steps=1)
  got = metaopt.sum_window_grads(truncated, theta, key, num_windows=4)
  assert np.all(np.isfinite(got)) and not np.allclose(got, exact, rtol=0.05)
