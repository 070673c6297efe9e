"""The rope_gqa exercise: its grader passes the repo's own code (model.rope, repeat_interleave),
finds the untouched stub not started, and names each planted mistake in its hints."""

from types import SimpleNamespace


from exercises.__main__ import grade
from exercises.graders import rope_gqa as grader


def failing_hints(impl):
    return [h for _, ok, _, _, h in grader.cases(impl) if not ok]


def rotate(x, start, theta, exponent=2, interleaved=False):
    """RoPE written out (the grader's own, which it uses to recognise mistakes), with a knob
    for each mistake; at exponent 2, rotate-half, it is model.rope."""
    return grader._rotate(x, start, theta, exponent, interleaved).to(x.dtype)


def planted(**mistake):
    ref = grader.reference()
    return SimpleNamespace(rope=mistake.get("rope", ref.rope), expand_kv=mistake.get("expand_kv", ref.expand_kv))


def test_the_grader_passes_the_reference_and_finds_the_stub_not_started():
    ref = grade("rope_gqa", reference=True)
    assert ref["status"] == "passing" and len(ref["cases"]) >= 10, ref
    stub = grade("rope_gqa")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def test_the_written_out_rope_passes():
    assert failing_hints(planted(rope=rotate)) == []  # the knobs at their right values are model.rope


def test_interleaved_pairs_get_their_hint():
    got = failing_hints(planted(rope=lambda x, s, th: rotate(x, s, th, interleaved=True)))
    assert got and all("interleaved-pairs layout" in h for h in got), got


def test_frequencies_theta_to_the_minus_i_over_hs_get_their_hint():
    got = failing_hints(planted(rope=lambda x, s, th: rotate(x, s, th, exponent=1)))
    assert got and all("theta^(-2i/hs)" in h for h in got), got


def test_repeat_instead_of_repeat_interleave_gets_its_hint():
    got = failing_hints(planted(expand_kv=lambda k, n: k.repeat(1, n // k.shape[1], 1, 1)))
    # wrong where a kv head serves several query heads and there are several kv heads: 2 of 6, 3 of 6
    assert len(got) == 2 and all("repeat_interleave" in h and "wrong groups" in h for h in got), got
