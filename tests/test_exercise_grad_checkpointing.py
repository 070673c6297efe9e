"""The gradient-checkpointing exercise: its grader passes the reference (model.GPT._trunk's
branch), reads the stub as not started, and names the usual mistakes (no checkpointing, one
checkpoint around the whole stack, use_reentrant=True with an input that needs no grad)."""

from types import SimpleNamespace

import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from exercises.__main__ import grade
from exercises.graders import grad_checkpointing as grader


def failing_hints(fn):
    return [(case, h) for case, ok, _, _, h in grader.cases(SimpleNamespace(checkpointed_forward=fn)) if not ok]


def test_the_reference_passes_and_the_stub_is_not_started():
    ref = grade("grad_checkpointing", reference=True)
    assert ref["status"] == "passing" and ref["cases"], ref
    stub = grade("grad_checkpointing")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def test_no_checkpointing_gets_its_hint():
    got = failing_hints(grader.plain)
    assert any(c.startswith("saved for backward") and "no block is checkpointed" in h for c, h in got), got
    assert all(c.startswith("save") for c, _ in got), got  # output and gradients are right


def test_one_checkpoint_around_the_stack_gets_its_hint():
    got = failing_hints(lambda blocks, x: checkpoint(nn.Sequential(*blocks), x, use_reentrant=False))
    assert [c for c, _ in got] == ["saved for backward: one input per block (count, bytes)"], got
    assert "whole stack" in got[0][1]


def test_reentrant_gets_its_hint():
    def reentrant(blocks, x):
        for b in blocks:
            x = checkpoint(b, x, use_reentrant=True)
        return x

    got = failing_hints(reentrant)
    assert any("input requires grad: False" in c and "use_reentrant=True" in h for c, h in got), got
