"""The muP-rules exercise: its grader passes model.GPT's own values (read off tiny muP
models), reads the stub as not started, and names the usual mistakes (the embeddings' LR
scaled, the hidden LR scaled by sqrt, attention kept at 1/sqrt(d), the readout inverted)."""

import math
from types import SimpleNamespace

from exercises.__main__ import grade
from exercises.graders import mup_rules as grader


def failing_hints(impl):
    return [(case, h) for case, ok, _, _, h in grader.cases(impl) if not ok]


def test_the_reference_passes_and_the_stub_is_not_started():
    ref = grade("mup_rules", reference=True)
    assert ref["status"] == "passing" and len(ref["cases"]) > 50, ref
    stub = grade("mup_rules")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def hidden(name, shape):
    return name.startswith("transformer.h.") and len(shape) >= 2


def good():
    def lr_scale(name, shape, width, base_width):
        return base_width / width if hidden(name, shape) else 1.0

    def init_std(name, shape, width, base_width, n_layer):
        std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
        return std * (base_width / width) ** 0.5 if hidden(name, shape) else std

    return dict(lr_scale=lr_scale, init_std=init_std,
                attention_scale=lambda d, d0: math.sqrt(d0) / d,
                readout_multiplier=lambda width, base: base / width)


def test_a_correct_implementation_passes():
    assert failing_hints(SimpleNamespace(**good())) == []


def test_the_embeddings_lr_scaled_gets_its_hint():
    impl = SimpleNamespace(**{**good(), "lr_scale": lambda n, s, w, b: b / w if len(s) >= 2 else 1.0})
    got = failing_hints(impl)
    assert got and all(c.startswith("lr_scale transformer.wte") or c.startswith("lr_scale transformer.wpe")
                       for c, _ in got), got
    assert all("rule 1" in h for _, h in got), got


def test_the_hidden_lr_scaled_by_sqrt_gets_its_hint():
    impl = SimpleNamespace(**{**good(), "lr_scale": lambda n, s, w, b: (b / w) ** 0.5 if hidden(n, s) else 1.0})
    got = failing_hints(impl)
    assert got and all(c.startswith("lr_scale transformer.h.") and "scaled by sqrt" in h for c, h in got), got


def test_attention_kept_at_one_over_sqrt_d_gets_its_hint():
    impl = SimpleNamespace(**{**good(), "attention_scale": lambda d, d0: 1 / math.sqrt(d)})
    got = failing_hints(impl)
    assert len(got) == 2 and all("kept at 1 / sqrt(d)" in h for _, h in got), got  # right at the base only


def test_the_readout_inverted_gets_its_hint():
    impl = SimpleNamespace(**{**good(), "readout_multiplier": lambda width, base: width / base})
    got = failing_hints(impl)
    assert len(got) == 2 and all("width / base" in h for _, h in got), got


def test_the_init_without_the_mup_factor_gets_its_hint():
    def init_std(name, shape, width, base_width, n_layer):
        return 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02

    got = failing_hints(SimpleNamespace(**{**good(), "init_std": init_std}))
    assert got and all(c.startswith("init_std transformer.h.") and "muP factor is missing" in h for c, h in got), got
