"""The on_policy_kd exercise: its grader passes distill.py, finds the untouched stub not
started, and names each planted mistake in its hints."""

from types import SimpleNamespace


from exercises.__main__ import grade
from exercises.graders import on_policy_kd as grader


def hints(**overrides):
    impl = SimpleNamespace(**{**written_out(), **overrides})
    return [h for _, ok, _, _, h in grader.cases(impl) if not ok]


def written_out(shift=0, forward=False, everywhere=False, total=False, detach=False):
    """The two functions written out, with a knob for each mistake."""
    def rollout_batch(seq, prompt_len):
        x, y = seq[:, :-1].clone(), seq[:, 1:].clone()
        y[:, :max(prompt_len - 1 + shift, 0)] = -1
        return x, y

    def reverse_kl(s, t, y):
        s = s.detach() if detach else s
        ls, lt = s.log_softmax(-1), t.log_softmax(-1)
        per = (lt.exp() * (lt - ls)).sum(-1) if forward else (ls.exp() * (ls - lt)).sum(-1)
        picked = per.flatten() if everywhere else per[y != -1]
        return picked.sum() if total else picked.mean()

    return dict(rollout_batch=rollout_batch, reverse_kl=reverse_kl)


def test_the_grader_passes_the_reference_and_finds_the_stub_not_started():
    ref = grade("on_policy_kd", reference=True)
    assert ref["status"] == "passing" and len(ref["cases"]) == 5, ref
    stub = grade("on_policy_kd")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def test_the_written_out_functions_pass():
    assert hints() == []


def test_each_mistake_gets_its_hint():
    for knobs, words in [
        (dict(shift=1), "one target too many masked"),
        (dict(shift=-1), "one prompt target left in"),
        (dict(forward=True), "forward KL"),
        (dict(everywhere=True), "generated positions only"),
        (dict(total=True), "not their sum"),
        (dict(detach=True), "keep the student's graph"),
    ]:
        w = written_out(**knobs)
        got = hints(**w)
        assert got and all(words in h for h in got), (knobs, got)
