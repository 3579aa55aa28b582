"""The package version, written once: pyproject.toml reads it (setuptools parses this file
without importing the package), and resnext.__version__ re-exports it."""

__version__ = "0.1.0"
