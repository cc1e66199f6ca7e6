"""The cost benchmark: which suites exist, what they share, and running them in order.

Every suite measures estimators against the plain inner step (a jit-compiled
``lax.scan`` of ``system.step``, ratio 1) with :mod:`metaopt.timing`, in one
process on the same machine; the suites themselves are in
:mod:`studies.benchmark_suites` and :mod:`studies.benchmark_online`, the tables
and plots in :mod:`studies.benchmark_report`. Run them with ``python -m launch.benchmark``.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Callable, NamedTuple

import jax
import optax

import metaopt
from studies import benchmark_lopt
from studies import benchmark_online
from studies import benchmark_suites

# In the order they run.
SUITE_FNS = {"headline": benchmark_suites.headline, "breakdown": benchmark_suites.breakdown,
             "params": benchmark_suites.params, "hyperparams": benchmark_suites.hyperparams,
             "particles": benchmark_suites.particles, "chains": benchmark_online.chains,
             "memory": benchmark_online.memory, "tuner": benchmark_online.tuner,
             "online_rnn": benchmark_online.online_rnn,
             "learned_optimizers": benchmark_lopt.learned_optimizers}
SUITES = tuple(SUITE_FNS)


class Config(NamedTuple):
  """What the suites share (``launch.benchmark``'s flags give every field).

  Attributes:
    estimators: the headline suite's estimator names or specs.
    sweep_estimators: the params and hyperparams suites' estimators.
    particles_estimator: the particles suite's estimator (one that takes
      ``num_particles``).
    memory_estimators: the memory suite's online estimators; the whole-horizon
      ones of ``metaopt.ESTIMATOR_TABLE`` are always measured beside them.
    num_steps: inner steps per window (the headline problem's horizon is 200).
    num_particles: particles of the estimators that take them.
    repeats: timed repeats (median reported); sweeps use fewer on their
      largest problems.
    memory_horizons: the memory suite's horizons T (multiples of its window, 20).
    memory_timing: also time the whole-horizon estimators with and without
      rematerialisation (T <= 200).
    memory_problem: ``"digits"`` (the 5k MLP) or ``"toy_regression"``.

  Examples:
    >>> import metaopt
    >>> from studies import benchmarks
    >>> with_particles = [n for n, i in metaopt.ESTIMATOR_TABLE.items() if i.particles]
    >>> config = benchmarks.Config(
    ...     estimators=("tbptt", "uoro"), sweep_estimators=("tbptt",),
    ...     particles_estimator=with_particles[0], memory_estimators=("tbptt",), num_steps=20,
    ...     num_particles=8, repeats=15, memory_horizons=(20, 200), memory_timing=True,
    ...     memory_problem="digits")
    >>> sorted(benchmarks.run(config, suites=[]))  # no suite: only where it would run
    ['machine']
  """
  estimators: tuple[str, ...]
  sweep_estimators: tuple[str, ...]
  particles_estimator: str
  memory_estimators: tuple[str, ...]
  num_steps: int
  num_particles: int
  repeats: int
  memory_horizons: tuple[int, ...]
  memory_timing: bool
  memory_problem: str


def check(config: Config, suites: list[str]) -> None:
  """Raises ValueError for an option no suite could run with, before any compute.

  Examples:
    >>> from studies import benchmarks
    >>> config = benchmarks.Config(("tbptt",), ("tbptt",), "uoro", ("tbptt",), 20, 8, 15,
    ...                            (20, 200), True, "digits")
    >>> benchmarks.check(config, ["headline"])
    Traceback (most recent call last):
    ValueError: the particles suite needs an estimator that takes num_particles, got 'uoro'
  """
  unknown = sorted(set(suites) - set(SUITES))
  if unknown:
    raise ValueError(f"unknown suites {unknown}; choose from {list(SUITES)}")
  for spec in (*config.estimators, *config.sweep_estimators, *config.memory_estimators,
               config.particles_estimator):
    metaopt.estimator_info(spec)  # raises for an unknown name, listing the choices
  if "num_particles" not in metaopt.estimator_info(config.particles_estimator).takes:
    raise ValueError(f"the particles suite needs an estimator that takes num_particles, got "
                     f"{config.particles_estimator!r}")
  if config.repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {config.repeats}")
  # Building the headline estimators checks num_steps and num_particles as they will run.
  system = benchmark_suites.digits().system
  for spec in (*config.estimators, *config.sweep_estimators, *config.memory_estimators,
               config.particles_estimator):
    metaopt.get_estimator(spec, system, num_steps=config.num_steps,
                          num_particles=config.num_particles)
  window = benchmark_online.MEMORY_WINDOW
  if not config.memory_horizons or any(t < window or t % window
                                       for t in config.memory_horizons):
    raise ValueError(f"memory horizons must be multiples of {window} (the memory suite's "
                     f"window), got {list(config.memory_horizons)}")
  if config.memory_problem not in ("digits", "toy_regression"):
    raise ValueError(f"memory_problem must be digits or toy_regression, got "
                     f"{config.memory_problem!r}")


def machine() -> dict:
  """Where the numbers were measured: backend, device, cores, versions.

  Examples:
    >>> from studies import benchmarks
    >>> sorted(benchmarks.machine())
    ['backend', 'cpu_count', 'device', 'jax', 'machine', 'num_devices', 'optax']
  """
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  return {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
          "num_devices": jax.device_count(), "cpu_count": cores, "machine": platform.machine(),
          "jax": jax.__version__, "optax": optax.__version__}


def run(config: Config, *, suites: list[str],
        save: Callable[[dict], None] | None = None) -> dict:
  """Runs the chosen suites in ``SUITES`` order; returns ``{"machine": ..., suite: result}``.

  ``save(results)`` is called after every suite, so that a crash in a later
  suite keeps the earlier ones. Each suite takes minutes: see :class:`Config`
  for a run of none, tests/test_benchmark.py for the memory and tuner suites.
  """
  check(config, suites)
  results = {"machine": machine()}
  for suite in SUITES:
    if suite in suites:
      print(f"suite {suite}", flush=True)
      start = time.perf_counter()
      results[suite] = SUITE_FNS[suite](config)
      results[suite]["wall_seconds"] = time.perf_counter() - start
      if save is not None:
        save(results)
  return results
