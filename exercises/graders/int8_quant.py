"""Grader of exercises/int8_quant.py: against quant.py (quantize_rtn at 8 bits per row,
dequantize, pack_int4, unpack_int4) on seeded matrices, and the properties that define them
(half a step of error at most, the row maximum exact, a round trip through the bytes)."""

import torch

from exercises.graders import call


def reference():
    from types import SimpleNamespace

    import quant

    def quantize_int8(w):
        codes, scale = quant.quantize_rtn(w, 8, 0)
        return codes, scale.reshape(-1)

    return SimpleNamespace(quantize_int8=quantize_int8,
                           dequantize_int8=lambda codes, scales: quant.dequantize(codes, scales.reshape(-1, 1), 0),
                           pack_int4=quant.pack_int4, unpack_int4=quant.unpack_int4)


def _weights():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 24, generator=g) * torch.rand(16, 1, generator=g) * 3
    w[5] = 0.0  # a row of zeros
    w[7, 3] = -10.0  # a row whose extreme is negative
    return w


def quant_hint(w, codes, scales):
    if not (torch.is_tensor(codes) and codes.dtype == torch.int8 and codes.shape == w.shape):
        return "codes: a torch.int8 tensor of w's shape (use .to(torch.int8) after rounding and clamping)"
    if not (torch.is_tensor(scales) and scales.shape == (w.shape[0],)):
        return "scales: one per output channel (row), shape (N,)"
    rows = w.abs().amax(1)
    if torch.allclose(scales[rows > 0], torch.full_like(scales[rows > 0], w.abs().max().item() / 127)):
        return "one scale for the whole matrix (per tensor): take each row's own max |w| / 127"
    if torch.allclose(scales[rows > 0], rows[rows > 0] / 128) or torch.allclose(scales[rows > 0], rows[rows > 0] / 255):
        return "symmetric int8 uses 127 steps each side: scale = max |w| / 127"
    if torch.equal(codes, torch.trunc(w / scales.clamp_min(1e-30)[:, None]).to(torch.int8)) or \
            torch.equal(codes, torch.floor(w / scales.clamp_min(1e-30)[:, None]).to(torch.int8)):
        return "round to nearest (torch.round), not floor or truncation: the error must stay within half a step"
    if not torch.isfinite(scales).all() or scales[5] == 0:
        return "a row of zeros has max 0: give it scale 1 (its codes are 0), never divide by 0"
    return "compare with the docstring: scale_n = max |w[n]| / 127, codes = round(w / scale_n) clamped to +-127"


def cases(impl):
    ref = reference()
    w = _weights()
    want_codes, want_scales = ref.quantize_int8(w)
    result, error = call(impl.quantize_int8, w)
    if error is None and not (isinstance(result, tuple) and len(result) == 2):
        error = "return a pair (codes, scales)"
    if error is not None:
        yield "quantize_int8: codes and scales", False, "(codes, scales)", error, error
    else:
        codes, scales = result
        ok = torch.is_tensor(codes) and torch.equal(codes, want_codes) and torch.is_tensor(scales) and \
            scales.shape == want_scales.shape and torch.allclose(scales.float(), want_scales)
        yield "quantize_int8: codes and scales", ok, "int8 codes, one scale per row", (codes, scales), \
            None if ok else quant_hint(w, codes, scales)
    back, error = call(impl.dequantize_int8, want_codes, want_scales)
    step = want_scales[:, None].expand_as(w)
    ok = error is None and torch.is_tensor(back) and back.shape == w.shape and \
        bool(((back.float() - w).abs() <= step / 2 + 1e-6).all())
    hint = error or "scales[n] * codes[n, k], in float32 (codes.float())"
    yield "dequantize_int8: within half a step of w", ok, "|w - scale * code| <= scale / 2", \
        back if error is None else error, None if ok else hint
    exact = ok and torch.allclose(back.float().abs().amax(1), w.abs().amax(1))
    yield "dequantize_int8: each row's largest |w| exact", exact, "exact", back if error is None else error, \
        None if exact else (hint if not ok else "each row's max |w| is 127 steps: dequantized, it is exact")
    example = torch.tensor([[-8, 7, 1, -1]], dtype=torch.int8)
    packed, error = call(impl.pack_int4, example)
    ok = error is None and torch.is_tensor(packed) and packed.dtype == torch.uint8 and packed.tolist() == [[0xF0, 0x79]]
    hint = error
    if not ok and error is None and torch.is_tensor(packed):
        if packed.tolist() == [[0x0F, 0x97]]:
            hint = "the nibbles are swapped: column 2j in the LOW nibble (byte = lo | hi << 4)"
        elif packed.dtype != torch.uint8:
            hint = "return torch.uint8 bytes (a nibble holds code + 8, in [0, 15])"
        else:
            hint = "store code + 8 (in [0, 15]): a negative code has no nibble of its own"
    yield "pack_int4([[-8, 7, 1, -1]])", ok, [[0xF0, 0x79]], packed if error is None else error, None if ok else hint
    every = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2)
    back, error = call(impl.unpack_int4, ref.pack_int4(every))  # the repo's bytes, your unpacking
    ok = error is None and torch.is_tensor(back) and back.dtype == torch.int8 and torch.equal(back, every)
    yield "unpack_int4 of all 16 codes packed", ok, "the same codes", back if error is None else error, \
        None if ok else (error or "unpack: low nibble -> column 2j, high -> 2j + 1, each minus 8, as torch.int8")
