"""Estimators by name, for launch scripts and studies."""

from __future__ import annotations

from metaopt._src import base
from metaopt._src.pes import pes
from metaopt._src.rtrl import rtrl
from metaopt._src.tbptt import full_bptt
from metaopt._src.tbptt import tbptt
from metaopt._src.truncated_es import truncated_es
from metaopt._src.uoro import uoro

ESTIMATORS = ("full_bptt", "tbptt", "rtrl", "uoro", "pes", "truncated_es")
PARTICLE_ESTIMATORS = ("pes", "truncated_es")


def get_estimator(name: str, system: base.UnrolledSystem, *, num_steps: int,
                  num_particles: int = 8, sigma: float = 0.01) -> base.Estimator:
  """Builds estimator ``name``; options an estimator does not take are ignored.

  ``full_bptt`` ignores ``num_steps`` (its window is the horizon).

  Raises:
    ValueError: for an unknown name (listing the choices) or invalid options.
  """
  if name == "full_bptt":
    return full_bptt(system)
  if name in PARTICLE_ESTIMATORS:
    make = {"pes": pes, "truncated_es": truncated_es}[name]
    return make(system, num_steps=num_steps, num_particles=num_particles, sigma=sigma)
  makers = {"tbptt": tbptt, "rtrl": rtrl, "uoro": uoro}
  if name not in makers:
    raise ValueError(f"unknown estimator {name!r}; choose one of {list(ESTIMATORS)}")
  return makers[name](system, num_steps=num_steps)


def window_length(name: str, system: base.UnrolledSystem, num_steps: int) -> int:
  """Inner steps one ``unroll`` of estimator ``name`` advances."""
  return system.horizon if name == "full_bptt" else num_steps
