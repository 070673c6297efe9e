"""The curriculum_pacing exercise: its grader passes batches.seqlen_at, finds the untouched stub
not started, and names each planted mistake in its hints."""

import math
from types import SimpleNamespace

from exercises.__main__ import grade
from exercises.graders import curriculum_pacing as grader


def failing_hints(seqlen_at):
    return [h for _, ok, _, _, h in grader.cases(SimpleNamespace(seqlen_at=seqlen_at)) if not ok]


def written_out(round_up=False, divisors=True, root=math.sqrt):
    """seqlen_at written out, with a knob for each mistake."""
    def seqlen_at(it, start, block_size, iters, pacing, tokens):
        if it >= iters:
            return block_size
        p = it / iters
        raw = start + {"linear": p, "root": root(p), "step": math.floor(4 * p) / 4}[pacing] * (block_size - start)
        allowed = [n for n in range(start, block_size + 1, 8) if tokens % n == 0 or not divisors]
        return min(n for n in allowed if n >= raw) if round_up else max(n for n in allowed if n <= raw)
    return seqlen_at


def test_the_grader_passes_the_reference_and_finds_the_stub_not_started():
    ref = grade("curriculum_pacing", reference=True)
    assert ref["status"] == "passing" and len(ref["cases"]) >= 30, ref
    stub = grade("curriculum_pacing")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def test_the_written_out_rule_passes():
    assert failing_hints(written_out()) == []


def test_rounding_up_gets_its_hint():
    got = failing_hints(written_out(round_up=True))
    assert got and all("round" in h and "up" in h for h in got), got
    assert any("block_size before `iters`" in h for h in got)  # 63.4 rounded up is 64 a step early


def test_lengths_that_do_not_divide_tokens_get_their_hint():
    got = failing_hints(written_out(divisors=False))
    assert got and all("divide tokens" in h for h in got), got


def test_root_pacing_as_p_squared_gets_its_hint():
    got = failing_hints(written_out(root=lambda p: p ** 2))
    assert got and all("not p ** 2" in h for h in got), got
