"""The GPT block exercise: its grader passes model.Block, reads the stub as not started, and
names the usual mistakes (post-LN, a residual missing, ln_2 on the pre-attention x)."""

from types import SimpleNamespace

from exercises.__main__ import grade
from exercises.graders import gpt_block as grader


def failing_hints(block_forward):
    return [(case, h) for case, ok, _, _, h in grader.cases(SimpleNamespace(block_forward=block_forward)) if not ok]


def test_the_reference_passes_and_the_stub_is_not_started():
    ref = grade("gpt_block", reference=True)
    assert ref["status"] == "passing" and ref["cases"], ref
    stub = grade("gpt_block")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def test_a_correct_implementation_passes():
    def block_forward(x, ln_1, attn, ln_2, mlp):
        x = x + attn(ln_1(x))
        return x + mlp(ln_2(x))

    assert failing_hints(block_forward) == []


def test_post_ln_gets_its_hint():
    def block_forward(x, ln_1, attn, ln_2, mlp):
        x = ln_1(x + attn(x))
        return ln_2(x + mlp(x))

    got = failing_hints(block_forward)
    assert any(c.startswith("block output") and "post-LN" in h for c, h in got), got


def test_a_missing_residual_gets_its_hint():
    def block_forward(x, ln_1, attn, ln_2, mlp):
        x = x + attn(ln_1(x))
        return mlp(ln_2(x))

    got = failing_hints(block_forward)
    assert any(c.startswith("block output") and "residual around the MLP is missing" in h for c, h in got), got


def test_ln_2_on_the_old_x_gets_its_hint():
    def block_forward(x, ln_1, attn, ln_2, mlp):
        return x + attn(ln_1(x)) + mlp(ln_2(x))

    got = failing_hints(block_forward)
    assert any(c.startswith("block output") and "before the attention" in h for c, h in got), got


def test_adding_in_place_is_caught():
    def block_forward(x, ln_1, attn, ln_2, mlp):
        x += attn(ln_1(x))
        x += mlp(ln_2(x))
        return x

    got = failing_hints(block_forward)
    assert got and all(c.startswith("the input x") and "in place" in h for c, h in got), got
