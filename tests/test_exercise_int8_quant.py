"""The int8_quant exercise: its grader passes quant.py, finds the untouched stub not started,
and names each planted mistake in its hints."""

from types import SimpleNamespace

import torch

from exercises.__main__ import grade
from exercises.graders import int8_quant as grader

REF = grader.reference()


def hints(**overrides):
    impl = SimpleNamespace(**{**vars(REF), **overrides})
    return [h for _, ok, _, _, h in grader.cases(impl) if not ok]


def quantize(per_tensor=False, top=127, rounding=torch.round, zero_scale=1.0):
    """quantize_int8 written out, with a knob for each mistake."""
    def quantize_int8(w):
        m = w.abs().amax() if per_tensor else w.abs().amax(1)
        scales = (m / top).expand(w.shape[0]).clone()
        scales[scales == 0] = zero_scale
        codes = rounding(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return codes, scales
    return quantize_int8


def test_the_grader_passes_the_reference_and_finds_the_stub_not_started():
    ref = grade("int8_quant", reference=True)
    assert ref["status"] == "passing" and len(ref["cases"]) == 5, ref
    stub = grade("int8_quant")
    assert stub["status"] == "not started" and "NotImplementedError" in stub["error"]


def test_the_written_out_rule_passes():
    assert hints(quantize_int8=quantize()) == []


def test_each_mistake_gets_its_hint():
    for overrides, words in [
        (dict(quantize_int8=quantize(per_tensor=True)), "per tensor"),
        (dict(quantize_int8=quantize(top=128)), "127 steps each side"),
        (dict(quantize_int8=quantize(rounding=torch.trunc)), "not floor or truncation"),
        (dict(quantize_int8=quantize(zero_scale=float("nan"))), "a row of zeros"),
        (dict(pack_int4=lambda c: ((c[:, 0::2] + 8).to(torch.uint8) << 4) | (c[:, 1::2] + 8).to(torch.uint8)),
         "nibbles are swapped"),
        (dict(pack_int4=lambda c: (c[:, 0::2].to(torch.uint8) & 15) | (c[:, 1::2].to(torch.uint8) << 4)), "code + 8"),
        (dict(dequantize_int8=lambda c, s: c.float()), "scales[n] * codes[n, k]"),
        (dict(unpack_int4=lambda p: torch.stack(((p >> 4).to(torch.int8) - 8, (p & 15).to(torch.int8) - 8), -1)
              .reshape(p.shape[0], -1)), "low nibble -> column 2j"),
    ]:
        got = hints(**overrides)
        assert got and all(words in h for h in got), (overrides, got)
