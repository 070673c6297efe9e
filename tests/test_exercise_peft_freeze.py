"""The BitFit freezing exercise: its grader passes peft.apply_bitfit, reads the stub as not
started, and names the usual mistakes (LayerNorm gains or the tied embedding left
trainable, frozen tensors handed to the optimizer)."""

from types import SimpleNamespace

from exercises.__main__ import grade
from exercises.graders import peft_freeze as grader


def failing_hints(impl):
    return [(case, h) for case, ok, _, _, h in grader.cases(impl) if not ok]


def test_the_reference_passes_and_the_stub_is_not_started():
    ref = grade("peft_freeze", reference=True)
    assert ref["status"] == "passing" and ref["cases"], ref
    stub = grade("peft_freeze")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def freeze_by(rule):
    """An apply_bitfit that trains the parameters whose name `rule` accepts."""
    def apply_bitfit(model):
        for n, p in model.named_parameters():
            p.requires_grad_(rule(n))
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    return apply_bitfit


def only_trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def test_a_correct_implementation_passes():
    impl = SimpleNamespace(apply_bitfit=freeze_by(lambda n: n.endswith(".bias")), trainable_parameters=only_trainable)
    assert failing_hints(impl) == []


def test_layernorm_gains_left_trainable_get_their_hint():
    rule = lambda n: n.endswith(".bias") or (".ln_" in n and n.endswith(".weight"))
    got = failing_hints(SimpleNamespace(apply_bitfit=freeze_by(rule), trainable_parameters=only_trainable))
    assert any("bitfit_layernorm" in h for _, h in got), got


def test_the_tied_embedding_left_trainable_gets_its_hint():
    rule = lambda n: n.endswith(".bias") or n == "transformer.wte.weight"
    got = failing_hints(SimpleNamespace(apply_bitfit=freeze_by(rule), trainable_parameters=only_trainable))
    assert any("tied embedding" in h for _, h in got), got


def test_frozen_tensors_passed_to_the_optimizer_get_their_hint():
    impl = SimpleNamespace(apply_bitfit=freeze_by(lambda n: n.endswith(".bias")),
                           trainable_parameters=lambda model: list(model.parameters()))
    got = failing_hints(impl)
    assert got and all("still passed to the optimizer" in h for c, h in got if c.startswith("the optimizer's")), got
    assert any("still passed to the optimizer" in h for _, h in got)


def test_counting_tensors_instead_of_scalars_gets_its_hint():
    def apply_bitfit(model):
        freeze_by(lambda n: n.endswith(".bias"))(model)
        return sum(1 for p in model.parameters() if p.requires_grad)
    got = failing_hints(SimpleNamespace(apply_bitfit=apply_bitfit, trainable_parameters=only_trainable))
    assert got == [("the count returned", "count scalars (sum of p.numel()), not tensors")], got
