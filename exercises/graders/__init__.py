"""The graders: one module per exercise, `reference()` and `cases(impl)` (see exercises/__init__.py)."""
