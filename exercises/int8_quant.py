"""
Exercise: weight quantization by hand, int8 per output channel and int4 packed two per byte
(the README's "Compact models: quantization and pruning").

Read quant.py (quantize_rtn, dequantize, pack_int4, unpack_int4) only after you have tried.
Grade: python -m exercises check int8_quant
"""

import torch  # noqa: F401  (you will need it)


def quantize_int8(w):
    """Symmetric int8 quantization of a weight matrix w (N, K) float, one scale per output
    channel (row), round to nearest:
        scale_n = max_k |w[n, k]| / 127        (a row of zeros: scale 1)
        code[n, k] = round(w[n, k] / scale_n), clamped to [-127, 127]
    Return (codes (N, K) torch.int8, scales (N,) float32). Then scale_n * code[n, k] is within
    scale_n / 2 of w[n, k], and each row's largest |w| is exact."""
    raise NotImplementedError("exercises/int8_quant.py: quantize_int8")


def dequantize_int8(codes, scales):
    """The weights the codes stand for: (N, K) float32, scales[n] * codes[n, k]."""
    raise NotImplementedError("exercises/int8_quant.py: dequantize_int8")


def pack_int4(codes):
    """Two int4 codes per byte. codes (N, K) int8 in [-8, 7], K even -> (N, K / 2) torch.uint8:
    column 2j goes in the low nibble and column 2j + 1 in the high nibble of byte j, each
    stored as code + 8 (in [0, 15]). E.g. [[-8, 7, 1, -1]] -> [[0xF0, 0x79]]."""
    raise NotImplementedError("exercises/int8_quant.py: pack_int4")


def unpack_int4(packed):
    """pack_int4's inverse: (N, K / 2) uint8 -> (N, K) int8 codes in [-8, 7]."""
    raise NotImplementedError("exercises/int8_quant.py: unpack_int4")
