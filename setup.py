"""Packaging shim for Beam workers: `--setup_file ./setup.py`.

Every piece of metadata (name, version, dependencies, packages, the
`churn-platform` command) lives in pyproject.toml; setuptools reads it from
there. This file exists because Beam's stager builds the package that remote
workers install with `python -m build --sdist` when `build` is installed, and
otherwise with `python setup.py sdist`, which needs a setup.py.
"""

from setuptools import setup

setup()
