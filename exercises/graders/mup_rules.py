"""Grader of exercises/mup_rules.py: against model.GPT itself. The reference builds tiny muP
GPTs (GPTConfig(mup=True, mup_base_width=...)) and reads every value off them: the LR factor
from GPT.lr_scale, the init std from GPT.__init__ (its normal draws replaced by the constant
std, so the weights hold the std times muP's factor exactly), the attention factor from
CausalSelfAttention.q_mult, and the readout multiplier from GPT.logits against the bare head.
The cases: every named parameter of a tiny GPT at 4x its base width, at 1/2 of it, and at
the base width, where each rule must give GPT-2's value."""

import functools
import math
from contextlib import contextmanager

import torch

BASE, N_LAYER, N_HEAD, VOCAB, BLOCK = 16, 2, 2, 11, 8


def _config(width, base_width, n_layer=N_LAYER, n_head=N_HEAD):
    from model import GPTConfig
    return GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=width, block_size=BLOCK, vocab_size=VOCAB,
                     bias=True, mup=True, mup_base_width=base_width)


@contextmanager
def _constant_normal():
    """torch.nn.init.normal_(t, mean, std) fills t with std: a model built inside holds, in each
    normally initialized tensor, the std it was drawn with (times any later factor)."""
    real = torch.nn.init.normal_

    def fill(tensor, mean=0.0, std=1.0, generator=None):
        with torch.no_grad():
            return tensor.fill_(std)

    torch.nn.init.normal_ = fill
    try:
        yield
    finally:
        torch.nn.init.normal_ = real


@functools.lru_cache(maxsize=None)
def _model(width, base_width, n_layer=N_LAYER, n_head=N_HEAD, constant=False):
    from model import GPT
    if constant:
        with _constant_normal():
            return GPT(_config(width, base_width, n_layer, n_head))
    torch.manual_seed(0)
    return GPT(_config(width, base_width, n_layer, n_head))


def reference():
    from types import SimpleNamespace

    def lr_scale(name, shape, width, base_width):
        return float(_model(width, base_width).lr_scale(name, torch.empty(shape)))

    def init_std(name, shape, width, base_width, n_layer):
        p = dict(_model(width, base_width, n_layer, constant=True).named_parameters())[name]
        assert tuple(p.shape) == tuple(shape) and p.dim() >= 2, (name, shape)
        return float(p.detach().flatten()[0])

    def attention_scale(head_size, base_head_size):
        # one head: n_embd = head_size, base width = base_head_size
        attn = _model(head_size, base_head_size, 1, 1).transformer.h[0].attn
        return float(attn.q_mult * (1.0 / math.sqrt(head_size)))  # q_mult, then SDPA's 1/sqrt(d)

    def readout_multiplier(width, base_width):
        m = _model(width, base_width)
        h = torch.ones(1, width, dtype=torch.float64)
        with torch.no_grad():
            head = m.lm_head.double()
            try:
                got = (m.logits(h) / head(h)).mean().item()
            finally:
                m.lm_head.float()
        return got

    return SimpleNamespace(lr_scale=lr_scale, init_std=init_std, attention_scale=attention_scale,
                           readout_multiplier=readout_multiplier)


def close(a, b, tol=1e-6):
    try:
        return abs(float(a) - float(b)) <= tol * max(abs(float(b)), 1e-12)
    except (TypeError, ValueError):
        return False


def call(fn, *args):
    """(result, None), or (None, the error); NotImplementedError (a stub) goes up."""
    try:
        return fn(*args), None
    except NotImplementedError:
        raise
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def recognise(got, known, fallback):
    for wrong, hint in known:
        if wrong is not None and close(got, wrong, 1e-4):
            return hint
    return fallback


def hidden(name, shape):
    return name.startswith("transformer.h.") and len(shape) >= 2


def residual(name):
    return name.endswith("c_proj.weight")


def lr_cases(impl, ref, width, base):
    w = width / base
    for name, p in _model(width, base).named_parameters():
        shape = tuple(p.shape)
        want = ref.lr_scale(name, shape, width, base)
        got, err = call(impl.lr_scale, name, shape, width, base)
        ok = err is None and close(got, want)
        hint = None
        if not ok:
            if err:
                hint = "lr_scale must return a number for every parameter name and shape"
            elif not hidden(name, shape):
                hint = recognise(got, [
                    (1 / w, "the LR was scaled for an input or vector parameter: rule 1 keeps the embeddings "
                            "(wte, wpe), LayerNorm gains, biases and ln_f at factor 1; only >= 2-D tensors "
                            "inside a block (transformer.h.*) get 1 / width_mult"),
                    (w ** -0.5, "the LR was scaled for an input or vector parameter (rule 1: factor 1)"),
                ], "not a hidden matrix: its Adam LR is unchanged by muP (factor 1)")
            else:
                hint = recognise(got, [
                    (w ** -0.5, "hidden LR scaled by sqrt: under Adam the factor is 1 / width_mult, linear in "
                                "width (an entry moves ~lr per step, and fan_in of them add up coherently)"),
                    (w, "inverted: a wider model needs a smaller hidden LR, base_width / width"),
                    (1.0, "hidden matrices (>= 2-D inside transformer.h.*) get 1 / width_mult (rule 2)"),
                ], "hidden matrix: Adam LR factor base_width / width (rule 2)")
        yield f"lr_scale {name}, width={width}, base={base}", ok, want, err or got, hint


def std_cases(impl, ref, width, base, n_layer):
    w = width / base
    for name, p in _model(width, base, n_layer, constant=True).named_parameters():
        shape = tuple(p.shape)
        if len(shape) < 2:
            continue
        want = ref.init_std(name, shape, width, base, n_layer)
        got, err = call(impl.init_std, name, shape, width, base, n_layer)
        ok = err is None and close(got, want)
        hint = None
        if not ok:
            gpt2 = 0.02 / math.sqrt(2 * n_layer) if residual(name) else 0.02
            if err:
                hint = "init_std must return a number for every matrix name and shape"
            elif not hidden(name, shape):
                hint = recognise(got, [
                    (0.02 * w ** -0.5, "the embedding's init was scaled: rule 1 keeps wte and wpe at std 0.02"),
                    (0.02 / w, "the embedding's init was scaled: rule 1 keeps wte and wpe at std 0.02"),
                ], "an embedding: GPT-2's std 0.02 at every width")
            else:
                hint = recognise(got, [
                    (gpt2, "the muP factor is missing: hidden matrices start at GPT-2's std times "
                           "width_mult ** -0.5 (variance ~ 1 / fan_in)"),
                    (gpt2 / w, "scaled by 1 / width_mult: the init std goes as width_mult ** -0.5 (the variance "
                               "goes as 1 / width_mult); the linear factor is Adam's LR"),
                    (gpt2 * w ** 0.5, "inverted: wider means a smaller std, times (base / width) ** 0.5"),
                    (0.02 * w ** -0.5 if residual(name) else None,
                     "c_proj is a residual projection: GPT-2's 0.02 / sqrt(2 n_layer), then muP's factor"),
                    (0.02 / math.sqrt(2 * n_layer) * w ** -0.5 if not residual(name) else None,
                     "only c_proj (attention's and the MLP's) gets 0.02 / sqrt(2 n_layer); c_attn and c_fc "
                     "start from 0.02"),
                ], "GPT-2's std (0.02, c_proj 0.02 / sqrt(2 n_layer)) times width_mult ** -0.5 inside blocks")
        yield f"init_std {name}, width={width}, base={base}, n_layer={n_layer}", ok, want, err or got, hint


def cases(impl):
    ref = reference()
    for width in (4 * BASE, BASE // 2, BASE):
        yield from lr_cases(impl, ref, width, BASE)
    for width, n_layer in ((4 * BASE, N_LAYER), (BASE, N_LAYER), (4 * BASE, 3)):
        yield from std_cases(impl, ref, width, BASE, n_layer)

    for d, d0 in ((16, 16), (64, 16), (8, 32)):
        want = ref.attention_scale(d, d0)
        got, err = call(impl.attention_scale, d, d0)
        ok = err is None and close(got, want)
        hint = None if ok else "attention_scale must return a number" if err else recognise(got, [
            (1 / math.sqrt(d), "attention kept at 1 / sqrt(d): away from the base, muP's rule 4 makes it ~ 1/d "
                               "(q and k correlate as they train, so q.k grows ~ d)"),
            (1 / d, "1/d alone is not 1 / sqrt(d) at the base: scale by sqrt(d_base) / d, so that the base "
                    "model is GPT-2 exactly"),
            (math.sqrt(d / d0) / math.sqrt(d), "q_mult inverted: it is width_mult ** -0.5 = sqrt(d_base / d)"),
            (math.sqrt(d0 / d), "that is q_mult alone: times the usual 1 / sqrt(d) too"),
        ], "sqrt(d_base) / d: q_mult = sqrt(d_base / d), then 1 / sqrt(d)")
        yield f"attention_scale, head_size={d}, base_head_size={d0}", ok, want, err or got, hint

    for width, base in ((64, 16), (16, 16), (8, 32)):
        want = ref.readout_multiplier(width, base)
        got, err = call(impl.readout_multiplier, width, base)
        ok = err is None and close(got, want)
        w = width / base
        hint = None if ok else "readout_multiplier must return a number" if err else recognise(got, [
            (w, "readout multiplied by width / base: it is base / width, dividing the logits back down "
                "(rule 3: h is correlated with W after training, so W h grows ~ width)"),
            (w ** -0.5, "the readout is 1 / width_mult, not width_mult ** -0.5 (rule 3)"),
            (1.0, "the readout is scaled away from the base: logits = W h / width_mult (rule 3)"),
        ], "base_width / width (rule 3)")
        yield f"readout_multiplier, width={width}, base={base}", ok, want, err or got, hint
