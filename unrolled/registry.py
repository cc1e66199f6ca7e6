"""Problems by name or import path, for launch scripts and studies."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from typing import Callable, Iterable

from unrolled.digits_mlp import digits_mlp
from unrolled.influence_balancing import influence_balancing
from unrolled.memory_rnn import memory_rnn
from unrolled.mnist1d import mnist1d
from unrolled.problem import Problem
from unrolled.toy_regression import toy_regression

_PROBLEMS: dict[str, Callable[..., Problem]] = {
    "digits_mlp": digits_mlp,
    "influence_balancing": influence_balancing,
    "memory_rnn": memory_rnn,
    "mnist1d": mnist1d,
    "toy_regression": toy_regression,
}
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class ProblemError(ValueError):
  """A problem name or import path that gives no problem.

  Attributes:
    name: the name or ``package.module:factory`` path given.
    reason: why, worded to follow the name (``"is unknown; ..."``, ``": no module ..."``).
  """

  def __init__(self, name: str, reason: str):
    self.name, self.reason = name, reason
    super().__init__(f"problem {name!r}{reason}")


def names() -> list[str]:
  """The registered problem names."""
  return sorted(_PROBLEMS)


def register(name: str, factory: Callable[..., Problem]) -> None:
  """Registers ``factory`` under ``name`` for :func:`get`, ``--problem`` and studies.

  The factory's keyword arguments are the problem's options
  (``--problem_option=key=value``), checked against its signature. Scripts
  and study workers that start in another process see names registered at
  import time of a module they import; a ``--problem=package.module:factory``
  import path needs no registration at all.

  Args:
    name: a new name: letters, digits, ``_``, ``-`` and ``.``; no ``:``.
    factory: ``factory(**options) -> unrolled.Problem``.

  Raises:
    ValueError: for a bad or taken name (registering the same factory again
      is allowed), or a factory that is not a function.

  Examples:
    >>> import unrolled
    >>> unrolled.register("short_toy", lambda horizon=20: unrolled.toy_regression(horizon=horizon))
    >>> unrolled.get("short_toy", horizon=10).system.horizon
    10
  """
  if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
    raise ValueError(f"a problem name is letters, digits, '_', '-' and '.', got {name!r}")
  if not callable(factory):
    raise ValueError(f"factory must be a function returning an unrolled.Problem, got "
                     f"{type(factory).__name__}")
  if _PROBLEMS.get(name, factory) is not factory:
    raise ValueError(f"problem {name!r} is registered already (to {_PROBLEMS[name]!r})")
  _PROBLEMS[name] = factory


def options(name: str) -> dict:
  """A problem's options and their defaults (``inspect.Parameter.empty`` where required)."""
  return {k: p.default for k, p in inspect.signature(_lookup(name)).parameters.items()
          if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _lookup(name: str) -> Callable[..., Problem]:
  """The factory of a registered name or of a ``package.module:factory`` import path."""
  if not isinstance(name, str):
    raise ProblemError(name, " is not a name or an import path")
  if name in _PROBLEMS:
    return _PROBLEMS[name]
  if ":" not in name:
    raise ProblemError(name, f" is unknown; choose one of {names()} or give an import path "
                       "'package.module:factory'")
  if not _IMPORT_PATH.fullmatch(name):
    raise ProblemError(name, ": an import path is 'package.module:factory' (dotted names, one ':')")
  module_name, attr = name.split(":")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    where = "" if e.name != module_name.split(".")[0] else " (is its folder on PYTHONPATH?)"
    raise ProblemError(name, f": no module named {e.name!r}{where}") from None
  except Exception as e:  # the user's module failed while importing: say how, in one line
    raise ProblemError(name, f": importing {module_name!r} failed: {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}") from None
  factory = module
  for part in attr.split("."):
    if not hasattr(factory, part):
      raise ProblemError(name, f": module {module_name!r} has no attribute {attr!r}")
    factory = getattr(factory, part)
  if not callable(factory):
    raise ProblemError(name, f": {attr!r} is {type(factory).__name__} {factory!r:.40}, not a "
                       "function returning an unrolled.Problem")
  return factory


def get(name: str, **kwargs) -> Problem:
  """Builds the problem ``name`` (registered, or ``package.module:factory``) with its options.

  Raises:
    ProblemError: (a ValueError) for an unknown name, an import path that
      does not import, or a factory that returns something else than an
      :class:`~unrolled.Problem`.
    ValueError: for an unknown option, listing the options.

  Examples:
    >>> import unrolled
    >>> unrolled.get("unrolled:toy_regression", horizon=10).system.horizon
    10
  """
  make = _lookup(name)
  parameters = inspect.signature(make).parameters.values()
  known = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
  takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters)
  unknown = sorted(set(kwargs) - set(known))
  if unknown and not takes_any:
    raise ValueError(f"unknown option(s) {unknown} for problem {name!r}; "
                     f"its options are {sorted(known)}")
  problem = make(**kwargs)
  if not isinstance(problem, Problem):
    raise ProblemError(name, f": the factory returned {type(problem).__name__}, not an "
                       "unrolled.Problem(system=..., theta=..., description=..., "
                       "hyperparameters=...)")
  return problem


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
