"""Grader of exercises/spike_guard.py: sequences of losses judged against faults.SpikeGuard,
each built so that one common mistake changes a verdict (a NaN compared with >, judging
before the window is full, a spike added to the history, a mean over all the history, >=
for >, factor 0)."""

import math


def reference():
    from types import SimpleNamespace

    from faults import SpikeGuard

    return SimpleNamespace(SpikeGuard=SpikeGuard)


DECLINE = [4.0 - 0.1 * i for i in range(10)]  # 4.0 ... 3.1: an ordinary start
# (name, factor, window, losses, the hint for a verdict that differs)
SEQUENCES = [
    ("a 4x loss once the window is full", 3.0, 5, DECLINE + [12.0, 3.0],
     "once `window` losses are in, a loss above factor x their mean is a spike"),
    ("a large loss before the window is full", 3.0, 5, [4.0, 3.9, 20.0, 3.8, 3.7, 3.6],
     "judge by the mean only once the window holds `window` losses; before that a finite loss is ordinary"),
    ("nan, early and late", 3.0, 5, [4.0, float("nan")] + DECLINE + [float("nan"), 3.0],
     "a non-finite loss is always a spike: test math.isfinite(loss) first (nan > anything is False)"),
    ("inf and -inf", 3.0, 5, [4.0, float("inf"), 3.9, float("-inf")] + DECLINE,
     "inf and -inf are spikes too, from the first step on (math.isfinite)"),
    ("two spikes in a row", 3.0, 4, DECLINE + [11.0, 11.0, 3.0],
     "a spike must not enter self.recent: it would move the mean the next loss is judged by"),
    ("the mean over the last `window` only", 2.0, 3, [40.0, 30.0, 20.0, 2.0, 2.0, 2.0, 5.0],
     "the mean is over the last `window` ordinary losses, not all of them"),
    ("exactly factor x the mean", 2.0, 2, [2.0, 2.0, 4.0, 4.0001],
     "a spike is strictly greater than factor x the mean (4.0 = 2 x 2.0 is ordinary)"),
    ("factor 0: non-finite only", 0.0, 3, DECLINE + [1000.0, float("nan"), 3.0],
     "factor 0 turns the mean test off: only a non-finite loss is a spike"),
]


def verdicts(cls, factor, window, losses):
    """(spike or not, per loss; the recent losses at the end; whether a spike changed
    self.recent), or the error as a string."""
    guard = cls(factor, window)
    out, kept = [], False
    for loss in losses:
        before = [repr(x) for x in guard.recent]
        try:
            why = guard.check(loss)
        except NotImplementedError:
            raise
        except Exception as e:  # a student's TypeError, ZeroDivisionError ...
            return f"{type(e).__name__}: {e}"
        if why is not None and not isinstance(why, str):
            return f"check returned {why!r}: return None or a string"
        out.append(why is not None)
        kept = kept or (why is not None and [repr(x) for x in guard.recent] != before)
    return out, [round(x, 6) for x in guard.recent], kept


def cases(impl):
    ref = reference().SpikeGuard
    for name, factor, window, losses, hint in SEQUENCES:
        want, got = verdicts(ref, factor, window, losses), verdicts(impl.SpikeGuard, factor, window, losses)
        if isinstance(got, str):
            yield name, False, want, got, got
            continue
        if any(w and not g and not math.isfinite(x) for x, w, g in zip(losses, want[0], got[0])):
            hint = "a non-finite loss is always a spike: test math.isfinite(loss) first (nan > anything is False)"
        elif got[2]:
            hint = "a spike must not enter self.recent: it would move the mean the next loss is judged by"
        elif len(got[1]) > window:
            hint = "self.recent keeps only the last `window` ordinary losses"
        ok = got[0] == want[0]
        yield f"{name}: verdicts", ok, want[0], got[0], None if ok else hint
        ok = got[1] == want[1]
        yield f"{name}: self.recent at the end", ok, want[1], got[1], None if ok else hint
