"""Sphinx configuration of the metaopt documentation.

Build: python -m sphinx -W --keep-going -b html docs docs/_build/html

Why Sphinx: the docstrings are Google style and already run as doctests; autodoc+napoleon renders
them, myst renders the moved Markdown unchanged.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # the repository root: metaopt, unrolled, studies

project = "metaopt"
author = "metaopt authors"
copyright = "metaopt authors"  # pylint: disable=redefined-builtin

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

# Google-style docstrings only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" as fields: autodoc documents a NamedTuple's fields itself (no duplicates).
napoleon_use_ivar = True
autodoc_member_order = "bysource"

# GitHub-style anchors for ## and ### headings, so links such as guides/studies.md#... resolve.
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = "metaopt"
