"""Particles, chains, RTRL tangents and study samples spread over devices, with the results of
one device. Run on CPU with XLA_FLAGS=--xla_force_host_platform_device_count=4."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import metaopt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_check(num_devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
             PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "multi_device_check.py")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def one_and_four():
  return run_check(1), run_check(4)


@pytest.mark.parametrize("part", ["pes", "tuner", "tuner_pes", "rtrl", "study"])
def test_four_devices_give_one_device_results(one_and_four, part):
  one, four = one_and_four
  assert one["devices"] == 1 and four["devices"] == 4
  np.testing.assert_allclose(np.asarray(four[part]), np.asarray(one[part]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("part", ["pes", "tuner", "tuner_pes", "rtrl", "study"])
def test_copies_are_spread_over_all_devices(one_and_four, part):
  _, four = one_and_four
  assert four[f"{part}_devices"] == 4


def test_shard_leading_is_a_no_op_on_one_device():
  x = np.arange(8.0)
  assert metaopt.shard_leading(x) is x


def test_chains_of_particles_keep_one_layout(one_and_four):
  """Chains spread over devices, particles within a chain not: no data moved between layouts."""
  _, four = one_and_four
  assert four["tuner_pes_collectives"] == 0
