"""The README's and the docs' examples run as written, and the example's rtrl line equals the exact
gradient. The example lives in the README, docs/getting_started.md and docs/guides/estimators.md
(identical copies, run once); "Adding an estimator" in docs/guides/estimators.md."""

import contextlib
import io
import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).parent.parent
EXAMPLE_PLACES = [("README.md", "## Example"), ("docs/getting_started.md", "## A first example"),
                  ("docs/guides/estimators.md", "## Example")]


def section(path, heading):
  """The lines of `heading`'s section in `path`, up to the next heading of the same or a higher
  level (a `#` line inside a fenced code block is code, not a heading)."""
  lines = (ROOT / path).read_text().splitlines(keepends=True)
  assert [l.rstrip("\n") for l in lines].count(heading) == 1, (path, heading)
  level, found, fenced, out = len(heading.split(" ", 1)[0]), False, False, []
  for line in lines:
    if line.startswith("```"):
      fenced = not fenced
    elif not fenced and line.startswith("#"):
      if found and len(line.split(" ", 1)[0]) <= level:
        break
      found = found or line.rstrip("\n") == heading
    if found:
      out.append(line)
  return "".join(out)


def python_blocks(path, heading):
  return re.findall(r"```python\n(.*?)```", section(path, heading), re.S)


def test_readme_example_is_the_same_wherever_it_is_shown():
  blocks = [python_blocks(path, heading)[0] for path, heading in EXAMPLE_PLACES]
  assert all(block == blocks[0] for block in blocks[1:])
  assert "metaopt.rtrl(system, num_steps=2)" in blocks[0]


def test_readme_example_runs_and_rtrl_is_exact():
  readme = (ROOT / "README.md").read_text()
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
  """"Adding an estimator" (docs/guides/estimators.md): the worked example is a working estimator
  built on metaopt.windowed."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import metaopt  # pylint: disable=g-import-not-at-top
  code = python_blocks("docs/guides/estimators.md", "## Adding an estimator")[0]
  scope = {}
  exec(compile(code, "docs worked estimator", "exec"), scope)
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


def test_readme_tune_your_own_model_example_is_the_guides_first():
  """The README keeps the guide's plain-JAX example; tests/test_user_model.py runs the guide's."""
  readme = python_blocks("README.md", "## Tune your own model")
  guide = python_blocks("docs/guides/own_model.md", "# Tune your own model")
  assert len(readme) == 1 and len(guide) == 2 and readme[0] == guide[0]
  assert 'output="runs/my-mlp"' in readme[0]
