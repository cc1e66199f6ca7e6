"""Particles, chains, RTRL tangents and study samples spread over devices, with the results of
one device: tests/multi_device_check.py on 1 and on 4 host CPU devices."""

import contextlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import metaopt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_checks(*device_counts):
  """multi_device_check.py's JSON for each device count, each from a fresh Python process.

  The script sets its device count with jax's ``jax_num_cpu_devices`` (the successor of the
  XLA_FLAGS that ``chex.set_n_cpu_devices`` writes), which only takes effect before JAX's backend
  starts. This process has started it, with the one device the other tests expect, so 1 and 4
  devices each need a fresh process. They run side by side.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
  script = os.path.join(ROOT, "tests", "multi_device_check.py")
  # Files, not pipes: a process never blocks on a full pipe while the other one is read.
  with contextlib.ExitStack() as stack:
    outs = [(stack.enter_context(tempfile.TemporaryFile("w+")),
             stack.enter_context(tempfile.TemporaryFile("w+"))) for _ in device_counts]
    procs = [stack.enter_context(subprocess.Popen([sys.executable, script, str(n)], cwd=ROOT,
                                                  env=env, stdout=out, stderr=err, text=True))
             for n, (out, err) in zip(device_counts, outs)]
    stack.callback(lambda: [p.kill() for p in procs])  # on a timeout or a failure
    results = []
    for proc, (out, err) in zip(procs, outs):
      proc.wait(timeout=300)
      out.seek(0)
      err.seek(0)
      assert proc.returncode == 0, err.read()[-3000:]
      results.append(json.loads(out.read().strip().splitlines()[-1]))
  return results


@pytest.fixture(scope="module")
def one_and_four():
  return run_checks(1, 4)


@pytest.mark.slow
@pytest.mark.parametrize("part", ["pes", "tuner", "tuner_pes", "rtrl", "study"])
def test_four_devices_give_one_device_results(one_and_four, part):
  one, four = one_and_four
  assert one["devices"] == 1 and four["devices"] == 4
  # assert_allclose takes NaN for equal to NaN.
  assert np.all(np.isfinite(one[part])), one[part]
  np.testing.assert_allclose(np.asarray(four[part]), np.asarray(one[part]), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("part", ["pes", "tuner", "tuner_pes", "rtrl", "study"])
def test_copies_are_spread_over_all_devices(one_and_four, part):
  _, four = one_and_four
  assert four[f"{part}_devices"] == 4


def test_shard_leading_is_a_no_op_on_one_device():
  x = np.arange(8.0)
  assert metaopt.devices.shard_leading(x) is x


@pytest.mark.slow
def test_chains_of_particles_keep_one_layout(one_and_four):
  """Chains spread over devices, particles within a chain not: no data moved between layouts."""
  _, four = one_and_four
  assert four["tuner_pes_collectives"] == 0
