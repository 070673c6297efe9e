"""The mixed-precision exercise: its grader passes model.py's fp32 loss and step.optimizer_step,
reads the stub as not started, and names the usual mistakes (the loss computed in bf16,
clipping before unscale_, scaler.update() forgotten)."""

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from exercises.__main__ import grade
from exercises.graders import mixed_precision as grader


def failing_hints(**overrides):
    impl = SimpleNamespace(**{**good(), **overrides})
    return [(case, h) for case, ok, _, _, h in grader.cases(impl) if not ok]


def test_the_reference_passes_and_the_stub_is_not_started():
    ref = grade("mixed_precision", reference=True)
    assert ref["status"] == "passing" and ref["cases"], ref
    stub = grade("mixed_precision")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def good():
    def loss_in_fp32(logits, targets):
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def scaler_step(loss, optimizer, scaler, params, max_norm):
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        scaler.step(optimizer)
        scaler.update()
        return norm

    return dict(loss_in_fp32=loss_in_fp32, scaler_step=scaler_step)


def test_a_correct_implementation_passes():
    assert failing_hints() == []


def test_the_loss_in_bf16_gets_its_hint():
    got = failing_hints(loss_in_fp32=lambda lg, t: F.cross_entropy(lg.view(-1, lg.size(-1)), t.view(-1),
                                                                   ignore_index=-1).float())
    assert got and all(c.startswith("loss,") and "computed in bf16" in h for c, h in got), got


def test_clipping_before_unscale_gets_its_hint():
    def scaler_step(loss, optimizer, scaler, params, max_norm):
        scaler.scale(loss).backward()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        scaler.step(optimizer)
        scaler.update()
        return norm

    got = failing_hints(scaler_step=scaler_step)
    assert any(c.startswith("gradient norm") and "too large by the scale" in h for c, h in got), got
    assert any(c.startswith("parameters after") and "before scaler.unscale_" in h for c, h in got), got


def test_forgetting_update_gets_its_hint():
    def scaler_step(loss, optimizer, scaler, params, max_norm):
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        scaler.step(optimizer)
        return norm

    got = failing_hints(scaler_step=scaler_step)
    assert got and all(c.startswith("the scale after") and "scaler.update() is missing" in h for c, h in got), got


def test_optimizer_step_instead_of_the_scalers_is_caught():
    def scaler_step(loss, optimizer, scaler, params, max_norm):
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        scaler.update()
        return norm

    got = failing_hints(scaler_step=scaler_step)
    assert any("must be skipped" in h for _, h in got), got
