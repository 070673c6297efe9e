"""The Switch capacity exercise: its grader passes moe.py, calls the untouched stub not
started, and names the common mistakes of planted wrong implementations."""

import math
from types import SimpleNamespace



from exercises.__main__ import grade
from exercises.graders import switch_capacity as grader


def hints(fn):
    return [h for _, ok, _, _, h in grader.cases(SimpleNamespace(switch_dispatch=fn)) if not ok]


def dispatch(cap_of, latest=False, per_expert=True):
    """A loop-based switch_dispatch with one thing changed."""
    def switch_dispatch(idx, E, cf):
        keep = grader.simulate(idx, E, cap_of(cf, len(idx), E), latest=latest, per_expert=per_expert)
        return keep, 1 - keep.float().mean().item()
    return switch_dispatch


def test_the_grader_passes_the_reference_and_calls_the_stub_not_started():
    ref = grade("switch_capacity", reference=True)
    assert ref["status"] == "passing" and ref["cases"], ref
    stub = grade("switch_capacity")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def test_the_simulated_right_answer_passes():
    assert hints(dispatch(lambda cf, N, E: math.ceil(cf * N / E))) == []


def test_floor_gets_its_hint():
    got = hints(dispatch(lambda cf, N, E: math.floor(cf * N / E)))
    assert got and all("floor" in h for h in got), got


def test_dropping_the_earliest_gets_its_hint():
    got = hints(dispatch(lambda cf, N, E: math.ceil(cf * N / E), latest=True))
    assert got and all("earliest tokens were dropped" in h for h in got), got


def test_capacity_per_batch_gets_its_hint():
    got = hints(dispatch(lambda cf, N, E: math.ceil(cf * N / E), per_expert=False))
    assert got and all("per expert" in h for h in got), got
    got = hints(dispatch(lambda cf, N, E: math.ceil(cf * N)))  # the batch's capacity given to each expert
    assert got and all("per expert" in h for h in got), got


def test_a_count_instead_of_a_fraction_gets_its_hint():
    def switch_dispatch(idx, E, cf):
        keep = grader.simulate(idx, E, math.ceil(cf * len(idx) / E))
        return keep, float((~keep).sum())

    got = hints(switch_dispatch)
    assert got and all("not a count" in h for h in got), got
