"""Estimators by name, for launch scripts and studies."""

from __future__ import annotations

import ast
import re

from metaopt._src import base
from metaopt._src.forward_gradient import forward_gradient
from metaopt._src.nres import nres
from metaopt._src.pes import pes
from metaopt._src.reinforce import reinforce
from metaopt._src.rtrl import rtrl
from metaopt._src.rtrl_elementwise import rtrl_elementwise
from metaopt._src.tbptt import full_bptt
from metaopt._src.tbptt import tbptt
from metaopt._src.truncated_es import truncated_es
from metaopt._src.uoro import uoro

ESTIMATORS = ("full_bptt", "tbptt", "rtrl", "uoro", "pes", "truncated_es", "nres",
              "forward_gradient", "reinforce", "rtrl_elementwise")
PARTICLE_ESTIMATORS = ("pes", "truncated_es", "nres")


def parse_spec(spec: str) -> tuple[str, dict]:
  """``"uoro[rho=variance,rank=4]"`` -> ``("uoro", {"rho": "variance", "rank": 4})``.

  Options may also be separated by ``;`` (handy inside comma-separated flag lists).
  """
  if "[" not in spec:
    return spec, {}
  if not spec.endswith("]"):
    raise ValueError(f"estimator spec {spec!r} must look like name[key=value,...]")
  name, body = spec[:-1].split("[", 1)
  options = {}
  for item in filter(None, re.split(r"[,;]", body)):
    if "=" not in item:
      raise ValueError(f"estimator spec {spec!r}: option {item!r} must be key=value")
    key, value = item.split("=", 1)
    try:
      options[key.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      options[key.strip()] = value.strip()
  return name, options


def base_name(spec: str) -> str:
  return parse_spec(spec)[0]


def get_estimator(spec: str, system: base.UnrolledSystem, *, num_steps: int,
                  num_particles: int = 8, sigma: float = 0.01) -> base.Estimator:
  """Builds an estimator from its name, or a spec with options: ``"uoro[rho=variance,rank=4]"``.

  ``num_steps``, ``num_particles`` and ``sigma`` go to the estimators that take
  them (``full_bptt`` ignores ``num_steps``: its window is the horizon); a
  spec's own options go to the constructor as keyword arguments.

  Raises:
    ValueError: for an unknown name (listing the choices) or invalid options.
  """
  name, options = parse_spec(spec)
  if name not in ESTIMATORS:
    raise ValueError(f"unknown estimator {name!r}; choose one of {list(ESTIMATORS)}")
  if name == "full_bptt":
    kwargs = {}
  elif name in PARTICLE_ESTIMATORS:
    kwargs = {"num_steps": num_steps, "num_particles": num_particles, "sigma": sigma}
  elif name == "reinforce":
    kwargs = {"num_steps": num_steps, "sigma": sigma}
  else:
    kwargs = {"num_steps": num_steps}
  make = {"full_bptt": full_bptt, "tbptt": tbptt, "rtrl": rtrl, "uoro": uoro, "pes": pes,
          "truncated_es": truncated_es, "nres": nres, "forward_gradient": forward_gradient,
          "reinforce": reinforce, "rtrl_elementwise": rtrl_elementwise}[name]
  try:
    return make(system, **{**kwargs, **options})
  except TypeError as e:
    raise ValueError(f"estimator spec {spec!r}: {e}") from None


def window_length(spec: str, system: base.UnrolledSystem, num_steps: int) -> int:
  """Inner steps one ``unroll`` of estimator ``spec`` advances."""
  return system.horizon if base_name(spec) == "full_bptt" else num_steps


def copies_per_step(spec: str, num_particles: int) -> int:
  """Inner-step evaluations per inner step: particles for ES, the noise-free twin for reinforce."""
  name, options = parse_spec(spec)
  baseline = options.get("baseline", True)
  return {"pes": num_particles, "nres": num_particles, "truncated_es": num_particles + 1,
          "reinforce": 2 if baseline else 1}.get(name, 1)
