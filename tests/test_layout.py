"""The library's shape, as a newcomer meets it: a short top level, sub-namespaces by concern,
small files, thin launch scripts, a README that fits on a screen and links that resolve."""

import importlib
import pathlib
import re
import warnings

import pytest

import metaopt

ROOT = pathlib.Path(__file__).parent.parent
NAMESPACES = ("checkpoint", "devices", "files", "horizon", "learned_optimizers", "recurrent", "rl",
              "tensorboard", "timing", "tuning")


def test_the_top_level_holds_at_most_45_names_and_each_resolves_without_a_warning():
  assert len(metaopt.__all__) <= 45
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for name in metaopt.__all__:
      assert hasattr(metaopt, name), name


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_namespace_is_importable_and_lists_what_it_holds(namespace):
  module = importlib.import_module(f"metaopt.{namespace}")
  assert module is getattr(metaopt, namespace) and module.__doc__
  for name in module.__all__:
    assert hasattr(module, name), f"metaopt.{namespace}.{name}"


def test_moved_names_keep_working_with_a_warning_naming_the_new_one():
  moved = metaopt._MOVED  # pylint: disable=protected-access
  assert len(moved) >= 40 and not set(metaopt.__all__) & set(moved)
  for name, where in moved.items():
    with pytest.warns(DeprecationWarning, match=rf"metaopt\.{where}\.{name}\b"):
      assert getattr(metaopt, name) is getattr(getattr(metaopt, where), name)
  with pytest.raises(AttributeError, match="no attribute 'nothing'"):
    metaopt.nothing  # pylint: disable=pointless-statement


def _lines(path):
  return len(path.read_text().splitlines())


def test_no_library_file_is_over_400_lines_and_no_launch_script_over_250():
  long = {str(p.relative_to(ROOT)): _lines(p) for p in (ROOT / "metaopt").rglob("*.py")
          if _lines(p) > 400}
  assert not long
  long = {p.name: _lines(p) for p in (ROOT / "launch").glob("*.py") if _lines(p) > 250}
  assert not long


def test_the_readme_fits_on_a_screen_and_its_links_and_the_guides_links_resolve():
  assert _lines(ROOT / "README.md") <= 250
  pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
  pages = [p for p in pages if "_build" not in p.parts]
  assert len(pages) >= 14
  for page in pages:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
      if "://" not in target:
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}"
