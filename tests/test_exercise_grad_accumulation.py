"""exercises/grad_accumulation.py: the grader passes the reference (step.py's loss /
accumulation_steps, one clip after), fails the stub, and names each planted mistake."""

from types import SimpleNamespace

import torch

from exercises.__main__ import grade
from exercises.graders import grad_accumulation as grader

REF = grader.reference()


def test_the_grader_passes_the_reference_and_fails_the_stub():
    ref = grade("grad_accumulation", reference=True)
    assert ref["status"] == "passing" and len(ref["cases"]) >= 6, ref
    stub = grade("grad_accumulation")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def accumulate(divide=True, zero_in_loop=False, clip_in_loop=0.0):
    def accumulate_gradients(model, batches, loss_fn):
        total = 0.0
        for x, y in batches:
            if zero_in_loop:
                model.zero_grad()
            loss = loss_fn(model, x, y)
            (loss / len(batches) if divide else loss).backward()
            if clip_in_loop:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_in_loop)
            total += loss.item()
        return total / len(batches)
    return SimpleNamespace(accumulate_gradients=accumulate_gradients,
                           clip_after_accumulation=REF.clip_after_accumulation)


def failing(impl):
    return [(case, h) for case, ok, _, _, h in grader.cases(impl) if not ok]


def test_planted_accumulation_mistakes_get_their_hints():
    got = failing(accumulate(divide=False))
    assert got and all("summed, not averaged (4x too large)" in h for _, h in got)
    got = failing(accumulate(zero_in_loop=True))
    assert got and all("zero_grad inside the loop" in h for _, h in got)
    got = failing(accumulate(clip_in_loop=1.0))
    assert got and all("clipped per micro-batch" in h for _, h in got)
    total_not_mean = SimpleNamespace(**{**vars(REF), "accumulate_gradients": lambda m, b, f: REF.accumulate_gradients(
        m, b, f) * len(b)})
    got = failing(total_not_mean)
    assert [c for c, _ in got] == [f"{kind}: returns the big batch's mean loss" for kind in ("linear", "gpt")]
    assert all("sum of the micro-batches' losses" in h for _, h in got)


def test_planted_clipping_mistakes_get_their_hints():
    def per_tensor(model, max_norm):
        norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
        for p in model.parameters():
            torch.nn.utils.clip_grad_norm_([p], max_norm)
        return norm

    def norm_after(model, max_norm):
        REF.clip_after_accumulation(model, max_norm)
        return torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()

    got = failing(SimpleNamespace(accumulate_gradients=REF.accumulate_gradients, clip_after_accumulation=per_tensor))
    assert got and all("each tensor clipped on its own" in h for _, h in got)
    got = failing(SimpleNamespace(accumulate_gradients=REF.accumulate_gradients, clip_after_accumulation=norm_after))
    assert got and all("norm after clipping" in h for _, h in got)
