"""The ALBERT exercise: its grader passes model.GPT with emb_dim and GPTConfig.stored_block,
reads the stub as not started, and names the usual mistakes (the head through the
projection instead of its transpose, immediate sharing as i % repeat)."""

from types import SimpleNamespace

import torch.nn.functional as F

from exercises.__main__ import grade
from exercises.graders import albert as grader


def failing_hints(impl):
    return [(case, h) for case, ok, _, _, h in grader.cases(impl) if not ok]


def test_the_reference_passes_and_the_stub_is_not_started():
    ref = grade("albert", reference=True)
    assert ref["status"] == "passing" and ref["cases"], ref
    stub = grade("albert")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def good():
    def shared_layers(n_layer, share, repeat):
        return [0 if share == "all" else i // repeat if share == "immediate" else i for i in range(n_layer)]

    return dict(factorized_embedding=lambda idx, table, P: F.linear(table[idx], P),
                tied_logits=lambda h, table, P: F.linear(F.linear(h, P.t()), table),
                shared_layers=shared_layers)


def test_a_correct_implementation_passes():
    assert failing_hints(SimpleNamespace(**good())) == []


def test_logits_through_the_projection_not_its_transpose_gets_its_hint():
    impl = SimpleNamespace(**{**good(), "tied_logits": lambda h, table, P: F.linear(F.linear(h, P), table)})
    got = failing_hints(impl)
    assert any(c.startswith("tied logits, V=11, E=6") and "transpose" in h for c, h in got), got
    assert any(c.startswith("tied logits, V=11, E=4") and "transpose" in h for c, h in got), got  # a shape error


def test_immediate_sharing_as_modulo_gets_its_hint():
    impl = SimpleNamespace(**{**good(), "shared_layers": lambda n, share, r: (
        [i % r for i in range(n)] if share == "immediate" else good()["shared_layers"](n, share, r))})
    got = failing_hints(impl)
    assert got and all("immediate" in c and "not i % repeat" in h for c, h in got), got
