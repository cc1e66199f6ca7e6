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
