"""The spike_guard exercise: its grader passes faults.SpikeGuard, finds the untouched stub not
started, and names each planted mistake in its hints."""

import math
from types import SimpleNamespace

from exercises.__main__ import grade
from exercises.graders import spike_guard as grader


def failing_hints(cls):
    return [h for _, ok, _, _, h in grader.cases(SimpleNamespace(SpikeGuard=cls)) if not ok]


def written_out(isfinite=True, early=False, keep_spikes=False, everything=False, ge=False, factor_zero=True):
    """SpikeGuard written out, with a knob for each mistake."""
    class SpikeGuard:
        def __init__(self, factor, window):
            self.factor, self.window, self.recent, self.all = factor, window, [], []

        def check(self, loss):
            why = None
            if isfinite and not math.isfinite(loss):
                why = "non-finite"
            elif (self.factor > 0 or not factor_zero) and (early or len(self.recent) == self.window) and self.recent:
                pool = self.all if everything else self.recent
                mean = sum(pool) / len(pool)
                if (loss >= self.factor * mean) if ge else (loss > self.factor * mean):
                    why = f"{loss} > {self.factor} x {mean}"
            if why is None or keep_spikes:
                self.recent = (self.recent + [loss])[-self.window:]
                self.all.append(loss)
            return why
    return SpikeGuard


def test_the_grader_passes_the_reference_and_finds_the_stub_not_started():
    ref = grade("spike_guard", reference=True)
    assert ref["status"] == "passing" and len(ref["cases"]) == 2 * len(grader.SEQUENCES), ref
    stub = grade("spike_guard")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def test_the_written_out_guard_passes():
    assert failing_hints(written_out()) == []


def test_each_mistake_gets_its_hint():
    for knobs, words in [
        (dict(isfinite=False), "isfinite"),  # nan > x is False: the naive test misses it
        (dict(early=True), "before that a finite loss is ordinary"),
        (dict(keep_spikes=True), "must not enter self.recent"),
        (dict(everything=True), "not all of them"),
        (dict(ge=True), "strictly greater"),
        (dict(factor_zero=False), "factor 0"),
    ]:
        got = failing_hints(written_out(**knobs))
        assert got and all(words in h for h in got), (knobs, got)
