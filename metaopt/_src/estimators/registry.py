"""The estimator table: what every estimator is, takes and costs, read by launch/ and studies/."""

from __future__ import annotations

import ast
import inspect
import re
from typing import Any, Callable, NamedTuple

from metaopt._src.core import base
from metaopt._src.estimators.forward_gradient import forward_gradient
from metaopt._src.estimators.nres import nres
from metaopt._src.estimators.pes import pes
from metaopt._src.estimators.reinforce import reinforce
from metaopt._src.estimators.rtrl import rtrl
from metaopt._src.estimators.rtrl_elementwise import rtrl_elementwise
from metaopt._src.estimators.tbptt import full_bptt
from metaopt._src.estimators.tbptt import tbptt
from metaopt._src.estimators.truncated_es import truncated_es
from metaopt._src.estimators.uoro import uoro
from metaopt._src.estimators.uoro_preactivation import uoro_preactivation

SHARED_OPTIONS = ("num_steps", "num_particles", "sigma")


class EstimatorInfo(NamedTuple):
  """One row of :data:`ESTIMATOR_TABLE`.

  Attributes:
    name: the estimator's name in specs and flags.
    make: its constructor, ``make(system, **options)``.
    takes: which of the shared options (``num_steps``, ``num_particles``,
      ``sigma``) :func:`get_estimator` passes to ``make``; a study or a launch
      script asks for exactly these.
    whole_horizon: one ``unroll`` advances a whole horizon (its window is
      ``system.horizon``, whatever ``num_steps`` says).
    particles: ``state.inner`` stacks ``num_particles`` inner states on a
      leading axis (one per particle).
    copies: ``copies(options, num_particles) -> int``, inner-step evaluations
      per inner step (the cost floor in plain steps).
    target: what the sum of a horizon's window grads estimates: ``"exact"``,
      ``"unbiased"`` (the gradient itself), ``"smoothed"`` (unbiased for the
      Gaussian-smoothed loss), ``"noisy"`` (unbiased for the loop with state
      noise) or ``"biased"`` (truncated).
    reference: the exact estimator that computes, on the same keys, the
      gradient this one is compared with (``"full_bptt"``: reverse mode over
      the horizon; ``"rtrl"`` is the forward-mode alternative).
    source: who proposed it.
  """
  name: str
  make: Callable[..., base.Estimator]
  takes: tuple[str, ...]
  whole_horizon: bool = False
  particles: bool = False
  copies: Callable[[dict, int], int] = lambda options, num_particles: 1
  target: str = "exact"
  reference: str = "full_bptt"
  source: str = ""


_ES = ("num_steps", "num_particles", "sigma")

ESTIMATOR_TABLE: dict[str, EstimatorInfo] = {info.name: info for info in (
    EstimatorInfo("full_bptt", full_bptt, (), whole_horizon=True, source="backpropagation"),
    EstimatorInfo("tbptt", tbptt, ("num_steps",), target="biased",
                  source="Williams & Peng 1990"),
    EstimatorInfo("rtrl", rtrl, ("num_steps",), source="Williams & Zipser 1989; OHO"),
    EstimatorInfo("uoro", uoro, ("num_steps",), target="unbiased",
                  source="Tallec & Ollivier 2018; Cooijmans & Martens 2019"),
    EstimatorInfo("uoro_preactivation", uoro_preactivation, ("num_steps",), target="unbiased",
                  source="Cooijmans & Martens 2019 (cf. Mujika et al. 2018, KF-RTRL)"),
    EstimatorInfo("pes", pes, _ES, particles=True, copies=lambda o, n: n, target="smoothed",
                  source="Vicol, Metz & Sohl-Dickstein 2021"),
    EstimatorInfo("truncated_es", truncated_es, _ES, copies=lambda o, n: n + 1,
                  target="biased", source="truncated ES baseline"),
    EstimatorInfo("nres", nres, _ES, particles=True, copies=lambda o, n: n, target="smoothed",
                  source="Li, Metz, Vicol et al. 2023"),
    EstimatorInfo("forward_gradient", forward_gradient, ("num_steps",), target="unbiased",
                  source="Silver et al. 2022; Baydin et al. 2022"),
    EstimatorInfo("reinforce", reinforce, ("num_steps", "sigma"),
                  copies=lambda o, n: 2 if o.get("baseline", True) else 1, target="noisy",
                  source="Williams 1992; Cooijmans & Martens 2019"),
    EstimatorInfo("rtrl_elementwise", rtrl_elementwise, ("num_steps",),
                  source="Irie et al. 2023; Elelimy et al. 2024"),
)}
ESTIMATORS = tuple(ESTIMATOR_TABLE)


def parse_spec(spec: str) -> tuple[str, dict]:
  """``"uoro[rho=one_step_variance,rank=4]"`` -> ``("uoro", {"rho": "one_step_variance", "rank": 4})``.

  Options may also be separated by ``;`` (handy inside comma-separated flag lists).

  Raises:
    ValueError: for a spec that is not a string, has no name, is not closed, or
      has an option that is not ``key=value`` or is given twice.
  """
  if not isinstance(spec, str):
    raise ValueError(f"estimator spec must be a string like 'uoro[rank=4]', got "
                     f"{base.describe(spec)}")
  name, _, body = spec.partition("[")
  if not name.strip():
    raise ValueError(f"estimator spec {spec!r} has no estimator name")
  if not body:
    return spec, {}
  if not spec.endswith("]"):
    raise ValueError(f"estimator spec {spec!r} must look like name[key=value,...]")
  options = {}
  for item in filter(None, re.split(r"[,;]", body[:-1])):
    if "=" not in item:
      raise ValueError(f"estimator spec {spec!r}: option {item!r} must be key=value")
    key, value = (part.strip() for part in item.split("=", 1))
    if not key:
      raise ValueError(f"estimator spec {spec!r}: option {item!r} has no name")
    if key in options:
      raise ValueError(f"estimator spec {spec!r}: option {key!r} is given twice")
    try:
      options[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      options[key] = value
  return name, options


def estimator_info(spec: str) -> EstimatorInfo:
  """The table row of an estimator name or spec (``"uoro[rank=4]"`` -> uoro's row).

  Raises:
    ValueError: for a malformed spec or an unknown name, listing the choices.

  Examples:
    >>> import metaopt
    >>> info = metaopt.estimator_info("pes[sigma=0.1]")
    >>> info.particles, info.takes
    (True, ('num_steps', 'num_particles', 'sigma'))
  """
  name, _ = parse_spec(spec)
  if name not in ESTIMATOR_TABLE:
    raise ValueError(f"unknown estimator {name!r}; choose one of {list(ESTIMATORS)}")
  return ESTIMATOR_TABLE[name]


def estimator_options(spec: str, *, num_steps: int, num_particles: int = 8,
                      sigma: float = 0.01) -> dict[str, Any]:
  """The keyword arguments :func:`get_estimator` gives the constructor: the shared
  options the estimator takes, overridden by the spec's own."""
  info, (_, own) = estimator_info(spec), parse_spec(spec)
  shared = {"num_steps": num_steps, "num_particles": num_particles, "sigma": sigma}
  return {**{k: shared[k] for k in info.takes}, **own}


def get_estimator(spec: str, system: base.UnrolledSystem, *, num_steps: int,
                  num_particles: int = 8, sigma: float = 0.01,
                  spread_copies: bool = True) -> base.Estimator:
  """Builds an estimator from its name, or a spec with options: ``"uoro[rho=one_step_variance,rank=4]"``.

  ``num_steps``, ``num_particles`` and ``sigma`` go to the estimators that take
  them (see :class:`EstimatorInfo` ``takes``; ``full_bptt`` ignores
  ``num_steps``: its window is the horizon); a spec's own options go to the
  constructor as keyword arguments and win over the shared ones. Building
  validates every option and costs no compute, so launch scripts build the
  estimator to check their flags. ``spread_copies=False`` goes to the
  estimators that spread copies (particles, tangents) over the local devices.

  Raises:
    ValueError: for an unknown name (listing the choices) or invalid options.
  """
  info = estimator_info(spec)
  base.check_system(system)
  spread_copies = base.check_flag(spread_copies, "spread_copies")
  options = estimator_options(spec, num_steps=num_steps, num_particles=num_particles,
                              sigma=sigma)
  if not spread_copies and "spread_copies" in inspect.signature(info.make).parameters:
    options["spread_copies"] = False
  try:
    return info.make(system, **options)
  except TypeError as e:
    raise ValueError(f"estimator spec {spec!r}: {e}") from None


def window_length(spec: str, system: base.UnrolledSystem, num_steps: int) -> int:
  """Inner steps one ``unroll`` of estimator ``spec`` advances (a spec's own num_steps wins)."""
  if estimator_info(spec).whole_horizon:
    return system.horizon
  return parse_spec(spec)[1].get("num_steps", num_steps)


def copies_per_step(spec: str, num_particles: int) -> int:
  """Inner-step evaluations per inner step: particles for ES, the noise-free twin for reinforce."""
  options = parse_spec(spec)[1]
  return estimator_info(spec).copies(options, options.get("num_particles", num_particles))
