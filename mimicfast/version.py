"""The package version (one place; the root package and the evaluator's run identity read it)."""

__version__ = "0.1.0"
