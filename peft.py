"""
Parameter-efficient fine-tuning, by hand: LoRA, adapters and BitFit, added to a built
model by module surgery (submodules replaced or wrapped in place), everything else frozen.

    python train.py configs/peft_finetune.py --peft=lora --lora_r=8 --lora_targets="c_attn[q,v]"
    python train.py configs/peft_finetune.py --peft=adapter --adapter_size=16
    python train.py configs/peft_finetune.py --peft=bitfit
    python experiments/peft_experiment.py   # all of them against full fine-tuning, as a table

As a library (it imports nothing from this repo and works on any nn.Module):

    from peft import apply_lora, merge_lora, unmerge_lora, peft_state_dict, load_peft_state_dict
    apply_lora(model, "c_attn[q,v],c_fc", r=8, alpha=16)  # LoRA on q, v and the MLP's c_fc; all else frozen
    print(trainable_summary(model)["line"])                # what trains, and its optimizer state
    ...train...
    torch.save(peft_state_dict(model), "lora.pt")         # the LoRA tensors only: a small file
    merge_lora(model)                                     # W <- W + (alpha/r) B A: no extra matmuls
    unmerge_lora(model)                                   # W <- W - (alpha/r) B A

Which parameters are PEFT parameters: every module may carry a `peft_params` tuple naming
its own parameters that PEFT trains (LoRALinear: lora_A and lora_B; an adapter's two
Linears: weight and bias; under BitFit, each Linear and LayerNorm: bias). That marker, not
a name suffix, decides what is trainable, what `peft_state_dict` saves and what
`load_peft_state_dict` expects; it survives deepcopy, .to(device) and load_state_dict.

Merging is explicit: nothing here is tied to train()/eval(), so a state dict saved in eval
mode holds the base weights and the LoRA tensors apart (loralib merges inside eval(), and
reloading such a state dict adds B A twice).

References: LoRA, Hu et al. 2021 (arXiv:2106.09685); rsLoRA, Kalajdzievski 2023
(arXiv:2312.03732); adapters, Houlsby et al. 2019 (arXiv:1902.00751); BitFit, Ben Zaken
et al. 2021 (arXiv:2106.10199).
"""

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch.nn import functional as F

# A fused projection computes several projections in one matmul, its output split into
# equal parts: GPT-2's c_attn gives [q | k | v]. LoRA may adapt some parts only ("c_attn[q,v]").
FUSED_SPLITS = {"c_attn": ("q", "k", "v")}


@dataclass
class PEFTConfig:
    peft: Literal["none", "lora", "adapter", "bitfit"] = "none"  # which method; none = full fine-tuning
    lora_r: int = 8  # rank of each LoRA update B A
    lora_alpha: float = 16.0  # the update is scaled by lora_alpha / lora_r (LoRA, section 4.1)
    lora_dropout: float = 0.0  # dropout on the LoRA branch's input
    lora_targets: str = "c_attn[q,v]"  # Linear modules by name pattern; [q,v]: parts of a fused projection
    lora_rslora: bool = False  # scale by lora_alpha / sqrt(lora_r) instead (rsLoRA)
    adapter_size: int = 16  # bottleneck width of each adapter
    adapter_targets: str = "attn,mlp"  # the sublayers followed by an adapter
    bitfit_layernorm: bool = False  # BitFit: LayerNorm gains train too, not only the biases

    def __post_init__(self):
        # "not (inside the domain)": a NaN fails too
        if self.lora_r < 1:
            raise ValueError(f"lora_r={self.lora_r} must be >= 1")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha={self.lora_alpha} must be > 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if self.adapter_size < 1:
            raise ValueError(f"adapter_size={self.adapter_size} must be >= 1")


# ----------------------------------------------------------------------------------------
# finding modules by name


def split_patterns(spec):
    """'c_attn[q,v], c_fc' -> [('c_attn', ('q', 'v')), ('c_fc', None)]: commas separate
    patterns, except inside brackets."""
    out = []
    for item in re.split(r",(?![^\[]*\])", spec):
        item = item.strip()
        if not item:
            continue
        m = re.fullmatch(r"([^\[\]]+)(?:\[([^\[\]]*)\])?", item)
        if m is None:
            raise ValueError(f"cannot read the pattern '{item}': write a module name, e.g. c_fc, or c_attn[q,v]")
        parts = tuple(p.strip() for p in m.group(2).split(",")) if m.group(2) is not None else None
        out.append((m.group(1).strip(), parts))
    if not out:
        raise ValueError(f"no module patterns in '{spec}'")
    return out


def name_matches(name, pattern):
    """A pattern names a module by its full dotted name or by its tail: 'c_proj' matches
    transformer.h.0.attn.c_proj and transformer.h.0.mlp.c_proj, 'mlp.c_proj' only the
    latter. Shell wildcards work: 'h.[01].attn.c_attn'."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def describe_names(names):
    """['h.0.attn', 'h.1.attn', 'lm_head'] -> 'h.*.attn (x2), lm_head': an error message
    lists each kind of module once instead of once per layer."""
    counts = {}
    for n in names:
        key = re.sub(r"\.\d+(?=\.|$)", ".*", n)
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(k + (f" (x{c})" if c > 1 else "") for k, c in counts.items())


def tied_parameter_owners(model):
    """id(parameter) -> names of every module that registers it. A parameter with two
    owners is tied, like GPT-2's output head and token embedding."""
    owners = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for p in m._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append(mname)
    return owners


def replace_module(model, name, new):
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


# ----------------------------------------------------------------------------------------
# which parameters train


def peft_parameters(model):
    """{name: parameter} of the PEFT parameters, the ones some module lists in peft_params."""
    out = {}
    for mname, m in model.named_modules():
        for pname in getattr(m, "peft_params", ()):
            out[f"{mname}.{pname}" if mname else pname] = getattr(m, pname)
    return out


def mark_only_peft_trainable(model):
    """requires_grad on the PEFT parameters, off on all others. Frozen parameters get no
    .grad and no optimizer state; autograd skips their weight gradients entirely."""
    keep = {id(p) for p in peft_parameters(model).values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return model


def _mark(module, *names):
    module.peft_params = tuple(dict.fromkeys(getattr(module, "peft_params", ()) + names))


# ----------------------------------------------------------------------------------------
# LoRA


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (LoRA, eq. 3):

        y = W x + b + scaling * B A dropout(x),   A: (r, in), B: (out, r), scaling = alpha / r

    A starts random (Kaiming uniform, as nn.Linear's own init) and B at zero, so at the
    start the layer computes exactly what the base did and B A grows from zero.

    On a fused projection the update can cover some of its equal output parts only: for
    c_attn = [q | k | v] with parts (0, 2), q and v each get their own A and B (the LoRA
    paper's choice, section 7.1) and k is left as it was.
    """

    peft_params = ("lora_A", "lora_B")

    def __init__(self, base, r, alpha, dropout=0.0, rslora=False, parts=None, n_parts=1):
        super().__init__()
        if base.out_features % n_parts != 0:
            raise ValueError(f"{base.out_features} outputs do not split into {n_parts} equal parts")
        parts = tuple(range(n_parts)) if parts is None else tuple(parts)
        k, part_size = len(parts), base.out_features // n_parts
        self.base = base
        self.r, self.k = r, k
        # rsLoRA: alpha / sqrt(r) keeps the update's scale from shrinking as r grows
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        self.dropout = dropout
        # a quantized base (QLoRA: a layer with no fp32 weight, only codes) gets fp32 adapters
        w = getattr(base, "weight", None)
        device, dtype = (w.device, w.dtype) if w is not None else (next(base.buffers()).device, torch.float32)
        # the k parts' A matrices stacked: (k * r, in); their B matrices: (k, part_size, r)
        self.lora_A = nn.Parameter(torch.empty(k * r, base.in_features, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(k, part_size, r, device=device, dtype=dtype))
        # the output columns the update writes to, in the order of the flattened (k, part_size)
        cols = torch.cat([torch.arange(p * part_size, (p + 1) * part_size) for p in parts])
        self.register_buffer("lora_cols", cols.to(device), persistent=False)
        self.covers_all = k == n_parts  # then lora_cols is 0..out-1 and a plain add does it
        self.merged = False

    def lora_delta(self, x):
        """scaling * B A dropout(x): (..., in) -> (..., k * part_size)."""
        h = F.dropout(x, self.dropout, self.training) @ self.lora_A.t()  # (..., k * r)
        h = h.unflatten(-1, (self.k, self.r))  # (..., k, r)
        d = torch.einsum("...kr,kor->...ko", h, self.lora_B)  # (..., k, part_size)
        return d.flatten(-2) * self.scaling

    def forward(self, x):
        y = self.base(x)
        if self.merged:  # B A is inside base.weight already
            return y
        d = self.lora_delta(x)
        return y + d if self.covers_all else y.index_add(-1, self.lora_cols, d.to(y.dtype))

    def delta_weight(self):
        """scaling * B A as rows of the weight: (k * part_size, in), computed in fp32."""
        A = self.lora_A.float().view(self.k, self.r, -1)  # (k, r, in)
        return torch.bmm(self.lora_B.float(), A).flatten(0, 1) * self.scaling  # (k, part, r) x (k, r, in)

    @torch.no_grad()
    def merge(self):
        if not hasattr(self.base, "weight"):
            raise ValueError("a LoRA update cannot be folded into a quantized base (QLoRA): its weights are codes")
        if not self.merged:
            w = self.base.weight
            w.index_add_(0, self.lora_cols, self.delta_weight().to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            w = self.base.weight
            w.index_add_(0, self.lora_cols, -self.delta_weight().to(w.dtype))
            self.merged = False

    def extra_repr(self):
        return f"r={self.r}, scaling={self.scaling:g}, parts={self.k}, merged={self.merged}"


def apply_lora(model, targets="c_attn[q,v]", r=8, alpha=16.0, dropout=0.0, rslora=False):
    """Wrap every nn.Linear whose name matches one of `targets` in a LoRALinear, and make
    only PEFT parameters trainable. Returns the wrapped names. A Linear whose weight is
    tied to another module (GPT-2's output head shares the token embedding) is never
    wrapped: its update would change the embedding as well."""
    owners = tied_parameter_owners(model)
    wrapped = {f"{n}.base" for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    # an nn.Linear, or a layer that says it computes like one (quant.QuantLinear: QLoRA's frozen base)
    linears = [n for n, m in model.named_modules()
               if (isinstance(m, nn.Linear) or getattr(m, "lora_wrappable", False)) and n not in wrapped]
    candidates = [n for n in linears
                  if len(owners.get(id(getattr(model.get_submodule(n), "weight", None)), [n])) == 1]
    tied = [n for n in linears if n not in candidates]
    chosen = {}  # name -> parts (None: the whole output)
    for pattern, parts in split_patterns(targets):
        hits = [n for n in candidates if name_matches(n, pattern)]
        if not hits:
            note = f" ({describe_names(tied)}: left out, weight tied to another module)" if tied else ""
            raise ValueError(
                f"LoRA target '{pattern}' matches no Linear module; the ones LoRA can wrap are: "
                f"{describe_names(candidates)}{note}"
            )
        for n in hits:
            # two patterns hitting one module adapt the union of what they name:
            # c_attn[q] + c_attn[v] is c_attn[q,v]; c_attn + c_attn[q] is all of c_attn
            if n in chosen and (chosen[n] is None or parts is None):
                chosen[n] = None
            elif n in chosen:
                chosen[n] = tuple(dict.fromkeys(chosen[n] + parts))
            else:
                chosen[n] = parts
    for n, parts in chosen.items():
        base = model.get_submodule(n)
        short = n.rpartition(".")[2]
        n_parts, index = 1, None
        if parts is not None:
            names = FUSED_SPLITS.get(short)
            if names is None:
                raise ValueError(f"'{n}' is not a fused projection; parts like [q,v] apply to: {', '.join(FUSED_SPLITS)}")
            sizes = getattr(base, "part_sizes", None)  # a module may say how its output splits
            if sizes is not None and len(set(sizes)) > 1:
                raise ValueError(f"'{short}[{','.join(parts)}]': the parts of {short} have unequal widths {sizes} "
                                 f"(grouped-query attention: n_kv_head < n_head); adapt the whole {short} instead")
            unknown = [p for p in parts if p not in names]
            if unknown or not parts:
                raise ValueError(f"'{short}[{','.join(parts)}]': the parts of {short} are {', '.join(names)}")
            n_parts, index = len(names), sorted(names.index(p) for p in set(parts))
        replace_module(model, n, LoRALinear(base, r, alpha, dropout, rslora, index, n_parts))
    mark_only_peft_trainable(model)
    return list(chosen)


def lora_layers(model):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model):
    """Fold each LoRA update into its base weight, W <- W + scaling * B A, so inference runs
    the base model's matmuls only. Explicit, never done by train()/eval()."""
    for m in lora_layers(model):
        m.merge()
    return model


def unmerge_lora(model):
    """Undo merge_lora: W <- W - scaling * B A (exact up to fp32 rounding)."""
    for m in lora_layers(model):
        m.unmerge()
    return model


# ----------------------------------------------------------------------------------------
# adapters


class Adapted(nn.Module):
    """A sublayer followed by an adapter (Houlsby et al. 2019, figure 2):

        h = sublayer(x);   return h + W_up act(W_down h + b_down) + b_up

    W_down: (size, d) projects down to the bottleneck, W_up: (d, size) back up. W_up and
    b_up start at zero, so the adapter starts as the identity and the model as the base.
    In a pre-LayerNorm block (x + attn(ln(x))) this sits where Houlsby puts it: after the
    sublayer's output projection, before the residual addition."""

    def __init__(self, sublayer, dim, size):
        super().__init__()
        self.sublayer = sublayer
        w = next(sublayer.parameters())
        self.adapter_down = nn.Linear(dim, size, device=w.device, dtype=w.dtype)
        self.adapter_up = nn.Linear(size, dim, device=w.device, dtype=w.dtype)
        # near-identity start (Houlsby, section 2.1): small random down, zero up
        nn.init.normal_(self.adapter_down.weight, std=0.02)
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)
        _mark(self.adapter_down, "weight", "bias")
        _mark(self.adapter_up, "weight", "bias")

    def forward(self, *args, **kwargs):
        out = self.sublayer(*args, **kwargs)
        # a sublayer may return (output, extras), as an MoE returns (y, aux): adapt the output
        h = out[0] if isinstance(out, tuple) else out  # (..., dim)
        h = h + self.adapter_up(F.gelu(self.adapter_down(h)))
        return (h,) + out[1:] if isinstance(out, tuple) else h


def apply_adapters(model, targets="attn,mlp", size=16):
    """Follow every module whose name matches one of `targets` with an adapter of bottleneck
    width `size`; only PEFT parameters stay trainable. The adapter's width d is the
    sublayer's own `out_features` where it declares one (an MoE, whose last nn.Linear is its
    router), else the out_features of its last nn.Linear (its output projection). Returns the names."""
    names = [n for n, m in model.named_modules() if n and not isinstance(m, Adapted)]
    chosen = []
    for pattern, parts in split_patterns(targets):
        if parts is not None:
            raise ValueError(f"adapter target '{pattern}[{','.join(parts)}]': parts apply to LoRA targets only")
        hits = [n for n in names if name_matches(n, pattern) and not n.endswith(".sublayer")]
        if not hits:
            kinds = describe_names([n for n in names if "." in n and any(True for _ in model.get_submodule(n).children())])
            raise ValueError(f"adapter target '{pattern}' matches no module; modules with submodules are: {kinds}")
        chosen += [n for n in hits if n not in chosen]
    for n in chosen:
        sub = model.get_submodule(n)
        outs = [m.out_features for m in sub.modules() if isinstance(m, nn.Linear)]
        width = getattr(sub, "out_features", None) or (outs[-1] if outs else None)
        if width is None:
            raise ValueError(f"adapter target '{n}' has no nn.Linear inside, so its output width is unknown")
        replace_module(model, n, Adapted(sub, width, size))
    mark_only_peft_trainable(model)
    return chosen


# ----------------------------------------------------------------------------------------
# BitFit


def apply_bitfit(model, layernorm=False):
    """Train the bias terms only (BitFit): every nn.Linear's and nn.LayerNorm's bias, and
    with layernorm=True the LayerNorm gains too. A module built without a bias (GPT with
    bias=False, nanoGPT's default) gets a zero-initialised one, so the model starts exactly
    equal to the base; a bias=False GPT then has the parameters of a bias=True one. A Linear
    tied to another module (the output head) or marked `bitfit_skip` (an MoE's router) is
    left alone; a module with a `bitfit_biases()` method (an MoE: its experts' biases) makes
    and names its own. Returns the trained names."""
    owners = tied_parameter_owners(model)
    for name, m in model.named_modules():
        if hasattr(m, "bitfit_biases"):  # a module with biases of its own kind: an MoE's experts'
            _mark(m, *m.bitfit_biases())
        elif isinstance(m, nn.Linear) and len(owners[id(m.weight)]) == 1 and not getattr(m, "bitfit_skip", False):
            if m.bias is None:
                m.bias = nn.Parameter(torch.zeros(m.out_features, device=m.weight.device, dtype=m.weight.dtype))
            _mark(m, "bias")
        elif isinstance(m, nn.LayerNorm):
            if m.bias is None and m.weight is not None:
                m.bias = nn.Parameter(torch.zeros_like(m.weight))
            _mark(m, "bias", *(("weight",) if layernorm else ()))
    mark_only_peft_trainable(model)
    return list(peft_parameters(model))


# ----------------------------------------------------------------------------------------
# one entry point, state dicts, the report


def apply_peft(model, cfg):
    """The surgery a PEFTConfig describes; cfg.peft == 'none' leaves the model as it is."""
    if cfg.peft == "lora":
        apply_lora(model, cfg.lora_targets, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_rslora)
    elif cfg.peft == "adapter":
        apply_adapters(model, cfg.adapter_targets, cfg.adapter_size)
    elif cfg.peft == "bitfit":
        apply_bitfit(model, cfg.bitfit_layernorm)
    elif cfg.peft != "none":
        raise ValueError(f"peft='{cfg.peft}': use none, lora, adapter or bitfit")
    return model


def peft_state_dict(model):
    """The PEFT tensors only, under their names in model.state_dict(). With LoRA they are
    A and B, merged or not: the base weight is not in it."""
    return {name: p.detach() for name, p in peft_parameters(model).items()}


def load_peft_state_dict(model, state_dict):
    """Load PEFT tensors into a model that has had the same surgery. The keys given must be
    exactly its PEFT parameters, so the keys left out are exactly the base weights; shapes
    must match (same r, targets, sizes)."""
    if any(m.merged for m in lora_layers(model)):
        raise ValueError("unmerge_lora(model) first: new A, B on merged weights would leave the old B A in them")
    expected = set(peft_parameters(model))
    all_keys = set(model.state_dict())
    unexpected = sorted(set(state_dict) - expected)
    missing = sorted(expected - set(state_dict))
    if unexpected or missing:
        raise ValueError(
            "PEFT state dict does not fit this model: "
            + (f"unexpected keys {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''} " if unexpected else "")
            + (f"missing PEFT keys {missing[:4]}{' ...' if len(missing) > 4 else ''} " if missing else "")
            + "(was it trained with other PEFT settings?)"
        )
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # size mismatches: e.g. another lora_r
        raise ValueError(f"PEFT state dict does not fit this model (other PEFT settings?): {e}") from None
    assert set(result.missing_keys) == all_keys - expected and not result.unexpected_keys
    return model


def merged_state_dict(model):
    """A plain state dict of the model with every LoRA update folded into its weight and the
    wrappers gone, so it loads into the bare model class with no PEFT code. The model itself
    is not changed. Adapters cannot be folded (their bottleneck is nonlinear): ValueError."""
    if any(isinstance(m, Adapted) for m in model.modules()):
        raise ValueError("adapters add a nonlinear bottleneck, which cannot be merged into the base weights; "
                         "load base + adapter instead (sample.py does)")
    out = {}
    for mname, m in model.named_modules():
        if isinstance(m, LoRALinear):
            if not hasattr(m.base, "weight"):
                raise ValueError("LoRA on a quantized base (QLoRA) cannot be merged: the base's weights are codes; "
                                 "load base + LoRA instead (sample.py does)")
            w = m.base.weight.detach().clone()
            if not m.merged:
                w.index_add_(0, m.lora_cols, m.delta_weight().to(w.dtype))
            out[f"{mname}.weight"] = w
            if m.base.bias is not None:
                out[f"{mname}.bias"] = m.base.bias.detach().clone()
    lora_prefixes = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, LoRALinear))
    for key, t in model.state_dict().items():
        if not key.startswith(lora_prefixes):
            out[key] = t.detach().clone()
    return out


def trainable_summary(model):
    """What trains: counts, % of all parameters, and the AdamW state it needs (two tensors,
    exp_avg and exp_avg_sq, per trained parameter, in its dtype) against full fine-tuning's."""
    params = list(model.parameters())  # a tied parameter once
    trainable = [p for p in params if p.requires_grad]
    n_train = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in params)
    opt_bytes = sum(2 * p.numel() * p.element_size() for p in trainable)
    full_bytes = sum(2 * p.numel() * p.element_size() for p in params)
    pct = 100.0 * n_train / max(n_total, 1)
    line = (f"trainable: {n_train:,} of {n_total:,} parameters ({pct:.2f}%) | "
            f"AdamW state {opt_bytes / 2**20:.2f} MiB (full fine-tuning: {full_bytes / 2**20:.2f} MiB)")
    return {"trainable_params": n_train, "total_params": n_total, "trainable_percent": round(pct, 4),
            "optimizer_state_bytes": opt_bytes, "full_optimizer_state_bytes": full_bytes, "line": line}
