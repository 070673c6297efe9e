"""The LoRA exercise: its grader passes peft.LoRALinear, reads the stub as not started, and
names the usual mistakes (the alpha / r scale, B A transposed, B A merged twice)."""

from types import SimpleNamespace

import torch.nn.functional as F

from exercises.__main__ import grade
from exercises.graders import lora as grader


def failing_hints(impl):
    return [(case, h) for case, ok, _, _, h in grader.cases(impl) if not ok]


def test_the_reference_passes_and_the_stub_is_not_started():
    ref = grade("lora", reference=True)
    assert ref["status"] == "passing" and ref["cases"], ref
    stub = grade("lora")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def good():
    def lora_forward(x, weight, bias, A, B, alpha, r):
        return F.linear(x, weight, bias) + (alpha / r) * (x @ A.t()) @ B.t()

    return dict(lora_forward=lora_forward, merge=lambda W, A, B, alpha, r: W + (alpha / r) * (B @ A),
                unmerge=lambda M, A, B, alpha, r: M - (alpha / r) * (B @ A))


def test_a_correct_implementation_passes():
    assert failing_hints(SimpleNamespace(**good())) == []


def test_the_scale_forgotten_gets_its_hint():
    impl = SimpleNamespace(**{**good(), "lora_forward": lambda x, W, b, A, B, alpha, r: F.linear(x, W, b) + x @ A.t() @ B.t()})
    got = failing_hints(impl)
    assert any(c.startswith("forward") and "alpha / r is missing" in h for c, h in got), got


def test_b_a_transposed_gets_its_hint():
    impl = SimpleNamespace(**{**good(), "merge": lambda W, A, B, alpha, r: W + (alpha / r) * (B @ A).t()})
    got = failing_hints(impl)
    assert any(c.startswith("merge, in=8, out=8") and "transposed" in h for c, h in got), got
    assert any(c.startswith("merge, in=8, out=12") and "B A is (out, in)" in h for c, h in got), got  # a shape error


def test_merging_twice_gets_its_hint():
    impl = SimpleNamespace(**{**good(), "merge": lambda W, A, B, alpha, r: W + 2 * (alpha / r) * (B @ A)})
    got = failing_hints(impl)
    assert any(c.startswith("merge,") and "adds B A twice" in h for c, h in got), got
    assert any(c.startswith("merged forward") for c, _ in got)


def test_merging_in_place_is_caught():
    impl = SimpleNamespace(**{**good(), "merge": lambda W, A, B, alpha, r: W.add_((alpha / r) * (B @ A))})
    got = failing_hints(impl)
    assert got and all(c.startswith("merge leaves") and "in place" in h for c, h in got), got
