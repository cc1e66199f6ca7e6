"""Problems by name, for launch scripts and studies."""

from __future__ import annotations

import ast
import inspect
from typing import Callable, Iterable

from unrolled.digits_mlp import digits_mlp
from unrolled.influence_balancing import influence_balancing
from unrolled.problem import Problem
from unrolled.toy_regression import toy_regression

_PROBLEMS: dict[str, Callable[..., Problem]] = {
    "digits_mlp": digits_mlp,
    "influence_balancing": influence_balancing,
    "toy_regression": toy_regression,
}


def names() -> list[str]:
  """The registered problem names."""
  return sorted(_PROBLEMS)


def options(name: str) -> dict:
  """A problem's options and their defaults."""
  return {k: p.default for k, p in inspect.signature(_lookup(name)).parameters.items()}


def _lookup(name: str) -> Callable[..., Problem]:
  if name not in _PROBLEMS:
    raise ValueError(f"unknown problem {name!r}; choose one of {names()}")
  return _PROBLEMS[name]


def get(name: str, **kwargs) -> Problem:
  """Builds the problem ``name`` with the given options.

  Raises:
    ValueError: for an unknown name or option, listing the choices.
  """
  make = _lookup(name)
  known = options(name)
  unknown = sorted(set(kwargs) - set(known))
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for problem {name!r}; "
                     f"its options are {sorted(known)}")
  return make(**kwargs)


def parse_options(items: Iterable[str]) -> dict:
  """``['horizon=300', 'schedule=piecewise_linear']`` -> ``{'horizon': 300, 'schedule': ...}``.

  Values are Python literals where they parse as one, else strings (for ``key=value`` flags).

  Raises:
    ValueError: for an item without ``=``.
  """
  options = {}
  for item in items:
    if "=" not in item:
      raise ValueError(f"a problem option must be key=value, got {item!r}")
    key, value = item.split("=", 1)
    try:
      options[key.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      options[key.strip()] = value
  return options
