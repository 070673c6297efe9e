"""
Weight-only quantization of a GPT's Linear layers: the number formats, the two roundings,
and the Linear that computes with the stored integers. quantize.py is the command that
writes a quantized run folder; checkpoint.restore_model loads one through this file.

    from quant import quantize_rtn, dequantize, gptq, QuantLinear
    q, scale = quantize_rtn(w, bits=4, group_size=32)       # w (N, K) -> int8 codes (N, K), scales (N, K/32)
    w_hat = dequantize(q, scale, group_size=32)             # |w - w_hat| <= scale / 2 elementwise
    q, scale = gptq(w, H, bits=4, group_size=32)            # the same format, rounded to minimise |X w - X w_hat|

The formats (symmetric, no zero point; a weight is scale * code):
    int8   per output channel: codes in [-127, 127], one scale per row of W (N scales);
           stored as int8 bytes (LLM.int8's vector-wise weights, Dettmers et al. 2022, without the outliers)
    int4   group-wise: each row cut into groups of group_size input columns, one scale per
           group, codes in [-7, 7]; stored two codes per byte (pack_int4), so a weight costs
           4 bits + 16 / group_size bits of fp16 scale (4.5 bits at group 32)

The roundings:
    rtn    round to nearest: code = round(w / scale), scale = max |w| of the row or group / qmax
    gptq   GPTQ (Frantar et al. 2023, "Accurate Post-Training Quantization for Generative
           Pre-trained Transformers", Algorithm 1): the columns are rounded one at a time, and
           each one's rounding error is spread over the columns not yet rounded, weighted by the
           inverse Hessian of the layer's squared output error on calibration inputs,
           H = 2 X^T X / n, so that X W^T moves as little as possible (the Optimal Brain
           Surgeon update restricted to a fixed order, section 3)

Speed: PyTorch's int8 weight kernel (torch._weight_int8pack_mm) is used where it was
measured to pay: a few rows at a time (generation with the KV cache) on a CPU with fast bf16,
where it reads a quarter of fp32's bytes. Otherwise, and for int4, the weight is dequantized
on the fly, one layer at a time, and multiplied in fp32 (README, "Compact models").
"""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from system import cpu_has_fast_bf16

# ----------------------------------------------------------------------------------------
# formats


def qmax(bits):
    """The largest code of a symmetric bits-bit format: 127 for int8, 7 for int4 (-8 unused,
    so that zero is exact and the range is symmetric)."""
    return 2 ** (bits - 1) - 1


def groups_of(w, group_size):
    """w (N, K) viewed as (N, K / g, g) groups of g input columns; group_size 0: one group per row."""
    n, k = w.shape
    g = k if group_size == 0 else group_size
    if k % g:
        raise ValueError(f"group_size={group_size} does not divide the layer's {k} input columns")
    return w.reshape(n, k // g, g)


def quantize_rtn(w, bits, group_size=0):
    """Round to nearest. w (N, K) float -> (codes (N, K) int8 in [-qmax, qmax], scales (N, K / g)
    float32), scale = max |w| of the group / qmax (a zero group gets scale 1 and codes 0).
    Past 8 bits (a check that QAT at 16 bits is plain training) the codes are int32."""
    wg = groups_of(w.float(), group_size)  # (N, G, g)
    scale = wg.abs().amax(dim=-1) / qmax(bits)  # (N, G)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(wg / scale[..., None]).clamp(-qmax(bits), qmax(bits))
    return codes.to(torch.int8 if bits <= 8 else torch.int32).reshape(w.shape), scale  # wider codes: tests only


def dequantize(codes, scale, group_size=0):
    """codes (N, K) int8, scales (N, G) -> the weights they stand for, (N, K) float32."""
    wg = groups_of(codes.float(), group_size)  # (N, G, g)
    return (wg * scale.float()[..., None]).reshape(codes.shape)


def pack_int4(codes):
    """(N, K) int8 codes in [-8, 7], K even -> (N, K / 2) uint8: column 2j in the low nibble,
    column 2j + 1 in the high one (each stored as code + 8, in [0, 15])."""
    u = (codes.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed):
    """pack_int4's inverse: (N, K / 2) uint8 -> (N, K) int8."""
    lo = (packed & 0x0F).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    return torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], -1)  # interleave: lo0 hi0 lo1 hi1 ...


def scale_dtype(bits, group_size):
    """How the scales are stored: fp32 for one per row (N of them: nothing to save), fp16 for
    groups (int4 at group 32: 0.5 of the 4.5 bits a weight costs)."""
    return torch.float32 if group_size == 0 else torch.float16


# ----------------------------------------------------------------------------------------
# quantization-aware training


def fake_quantize(w, bits, group_size):
    """w as quantize.py would store it (round to nearest, scales in their stored dtype),
    with a straight-through gradient (Bengio et al. 2013; Jacob et al. 2018, section 2.3):
    forward the quantized weight, backward as if the rounding were the identity, so the fp32
    weight keeps learning while the loss sees what the quantized model will compute."""
    codes, scale = quantize_rtn(w.detach(), bits, group_size)
    w_q = dequantize(codes, scale.to(scale_dtype(bits, group_size)), group_size)
    return w + (w_q - w).detach()  # value w_q, gradient d/dw = 1


class FakeQuantLinear(nn.Linear):
    """An nn.Linear that computes with its weight fake-quantized (train.py's qat_bits). The
    same parameters and state dict keys as the Linear it replaces, so its checkpoint loads
    into a plain GPT, and quantize.py --method=rtn at the same format then gives exactly the
    weights it trained with."""

    def forward(self, x):
        return F.linear(x, fake_quantize(self.weight, self.bits, self.group_size).to(x.dtype), self.bias)


def apply_qat(model, bits, group_size):
    """Turn every quantizable Linear of model into a FakeQuantLinear, in place (its
    parameters stay the same tensors, so an optimizer built before or after sees them)."""
    for name, m in quantizable(model):
        groups_of(m.weight, group_size)  # a group size that does not divide the inputs: ValueError now
        m.__class__, m.bits, m.group_size = FakeQuantLinear, bits, group_size
    return model


# ----------------------------------------------------------------------------------------
# GPTQ


def gptq(w, H, bits, group_size=0, damp=0.01, block=128):
    """GPTQ's rounding of w (N, K) for inputs whose second moment is H (K, K) = 2 X^T X / n.
    Returns (codes, scales) in quantize_rtn's format. Algorithm 1 of the paper: dampen H by
    damp x its mean diagonal (section 4, "Cholesky reformulation"), take the upper Cholesky
    factor U of H^-1, then for each column j in order, round it, and push its error
    err = (w_j - q_j) / U_jj onto the later columns: W[:, j+1:] -= err U_j,j+1: (the lazy
    batch of section 4 does this a block of columns at a time). With groups, a group's scale
    is taken from its weights as they are when its first column comes up (the paper's
    reference code does the same)."""
    W = w.float().clone()
    n, k = W.shape
    g = k if group_size == 0 else group_size
    groups_of(W, group_size)  # checks that g divides k
    H = H.float().clone()
    dead = torch.diag(H) == 0  # inputs never active in the calibration data: any weight does
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(k)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)  # H^-1 = U^T U
    codes = torch.zeros(n, k, dtype=torch.int8)
    scales = torch.zeros(n, k // g)
    top = qmax(bits)
    for b0 in range(0, k, block):  # lazy batch updates: a block's errors go to the rest at once
        b1 = min(b0 + block, k)
        errors = torch.zeros(n, b1 - b0)
        for j in range(b0, b1):
            if j % g == 0:  # a new group: its scale from the weights as updated so far
                s = W[:, j:j + g].abs().amax(dim=1) / top
                scales[:, j // g] = torch.where(s > 0, s, torch.ones_like(s))
            s = scales[:, j // g]
            q = torch.round(W[:, j] / s).clamp(-top, top)
            codes[:, j] = q.to(torch.int8)
            err = (W[:, j] - q * s) / U[j, j]  # (N,)
            W[:, j + 1:b1] -= err[:, None] * U[j, j + 1:b1][None, :]
            errors[:, j - b0] = err
        W[:, b1:] -= errors @ U[b0:b1, b1:]
    return codes, scales


def input_hessian(inputs):
    """H = 2 X^T X / n over calibration inputs X (any leading shape, K features last): the
    Hessian of the layer's summed squared output error, which GPTQ rounds against."""
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    return 2.0 * x.T @ x / x.shape[0]


# ----------------------------------------------------------------------------------------
# the Linear that computes with the codes


class QuantLinear(nn.Module):
    """A Linear whose weight is stored as codes and scales (buffers, not parameters: they do
    not train). bits 8, group 0: int8 bytes and one fp32 scale per output row, multiplied by
    torch._weight_int8pack_mm on the CPU; otherwise the weight is dequantized when used."""

    def __init__(self, in_features, out_features, bits, group_size, bias, scale_dtype=torch.float16):
        super().__init__()
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        g = in_features if group_size == 0 else group_size
        stored = (out_features, in_features) if bits == 8 else (out_features, in_features // 2)
        self.register_buffer("qweight", torch.zeros(stored, dtype=torch.int8 if bits == 8 else torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, in_features // g, dtype=scale_dtype))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_codes(cls, codes, scale, bits, group_size, bias=None, scale_dtype=torch.float16):
        n, k = codes.shape
        m = cls(k, n, bits, group_size, bias is not None, scale_dtype)
        m.qweight.copy_(codes if bits == 8 else pack_int4(codes))
        m.scale.copy_(scale.to(scale_dtype))
        if bias is not None:
            m.bias.data.copy_(bias.detach())
        return m

    def codes(self):
        return self.qweight if self.bits == 8 else unpack_int4(self.qweight)

    def weight_fp32(self):
        """The weight the codes stand for, (out, in) float32."""
        return dequantize(self.codes(), self.scale, self.group_size)

    KERNEL_ROWS = 16  # the int8 kernel pays for matrix-vector products only (README, "Compact models")
    lora_wrappable = True  # peft.apply_lora may wrap it: LoRA on a frozen quantized base (QLoRA)

    def forward(self, x):
        rows = x.numel() // self.in_features
        if self.bits == 8 and self.group_size == 0 and x.device.type == "cpu" and rows <= self.KERNEL_ROWS \
                and int8_kernel_fast():
            # generation's few rows: W x with W = diag(scale) codes, never W in fp32. Measured here,
            # torch's int8 kernel beats an fp32 matmul only with bf16 activations (memory-bound: a
            # quarter of the bytes); with fp32 ones, or for a batch of rows, it is far slower
            y = torch._weight_int8pack_mm(x.reshape(rows, -1).to(torch.bfloat16), self.qweight,
                                          self.scale.reshape(-1).to(torch.bfloat16))
            y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias
        # everything else: the weight dequantized for this call, then an ordinary fp32 matmul (exact)
        return F.linear(x, self.weight_fp32().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, int{self.bits}, group={self.group_size or 'row'}"


@functools.cache
def int8_kernel_fast():
    """True where this CPU has fast bf16 arithmetic (AVX512-BF16 or AMX, system.cpu_has_fast_bf16),
    which torch._weight_int8pack_mm's bf16 path needs to beat fp32; elsewhere QuantLinear
    always dequantizes."""
    return cpu_has_fast_bf16()


def quantizable(model):
    """The Linear layers quantize.py converts: every nn.Linear but the output head, which
    shares its weight with the token embedding (quantizing it would untie the two; the
    embedding table is small next to the blocks at these vocabularies)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != "lm_head"]


def swap_in(model, name, new):
    """Replace the submodule at dotted path name with new."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def make_quantized(model, quant):
    """model (a GPT) with its quantized layers replaced by empty QuantLinear shells of the
    recorded format, ready for load_state_dict of a quantized checkpoint. quant: the
    checkpoint's "quant" dict ({"bits", "group_size", "layers", "scale_dtype"})."""
    dtype = getattr(torch, quant.get("scale_dtype", "float16"))
    for name in quant["layers"]:
        m = model.get_submodule(name)
        swap_in(model, name, QuantLinear(m.in_features, m.out_features, quant["bits"], quant["group_size"],
                                         m.bias is not None, dtype))
    return model


def quantized_bytes(state):
    """The bytes of a state dict's tensors (what a checkpoint's weights cost on disk)."""
    return sum(t.numel() * t.element_size() for t in state.values())

