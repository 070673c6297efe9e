"""The graders: one module per exercise, `reference()` and `cases(impl)` (see exercises/__init__.py)."""


def call(fn, *args):
    """A student's fn(*args) as (result, None), or (None, the error) for a shape or type
    mistake, so that the case fails with a hint instead of stopping the grade;
    NotImplementedError (a stub) goes up, so an untouched file reads as not started."""
    try:
        return fn(*args), None
    except NotImplementedError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        return None, f"{type(e).__name__}: {e}"
