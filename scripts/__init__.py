"""The project's scripts (experiments, model recipes, rendering), importable as `scripts.<name>` from the repository root.

A regular package on purpose: verl's wheel installs a top-level `scripts` package into site-packages,
which would shadow a namespace package of the same name (tests import `scripts.compare_methods`, ...)."""
