"""Grader of exercises/mlp_pruning.py: against prune.py (magnitude_importance, keep_indices,
prune_model) on a one-block GPT holding seeded MLP weights, and the property that defines a
pruned MLP: it computes the original with the dropped neurons zeroed."""

import torch
import torch.nn.functional as F

from exercises.graders import call

C, H = 8, 12


def _gpt(fc_weight, fc_bias, proj_weight):
    """A one-block GPT whose MLP holds these weights (bias=True when fc_bias is given)."""
    from model import GPT, GPTConfig

    with torch.random.fork_rng(devices=[]):
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=C, block_size=8, vocab_size=16, mlp_hidden=H,
                              bias=fc_bias is not None))
    mlp = model.transformer.h[0].mlp
    with torch.no_grad():
        mlp.c_fc.weight.copy_(fc_weight)
        mlp.c_proj.weight.copy_(proj_weight)
        if fc_bias is not None:
            mlp.c_fc.bias.copy_(fc_bias)
    return model


def reference():
    from types import SimpleNamespace

    import prune

    def magnitude_scores(fc_weight, fc_bias, proj_weight):
        model = _gpt(fc_weight, fc_bias, proj_weight)
        if fc_bias is not None:  # prune.py counts every bias of the neuron: here only c_fc's is one
            with torch.no_grad():
                model.transformer.h[0].mlp.c_proj.bias.zero_()
        return prune.magnitude_importance(model)["mlp"][0]

    def keep_indices(scores, keep):
        return prune.keep_indices({"mlp": scores[None]}, keep, ["mlp"])["mlp"][0]

    def prune_mlp(fc_weight, fc_bias, proj_weight, kept):
        mlp = prune.prune_model(_gpt(fc_weight, fc_bias, proj_weight), {"mlp": kept[None]}).transformer.h[0].mlp
        return mlp.c_fc.weight.detach(), None if fc_bias is None else mlp.c_fc.bias.detach(), mlp.c_proj.weight.detach()

    return SimpleNamespace(magnitude_scores=magnitude_scores, keep_indices=keep_indices, prune_mlp=prune_mlp)


def _weights(bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    fc, proj = torch.randn(H, C, generator=g), torch.randn(C, H, generator=g)
    fc[4] *= 0.01  # neuron 4 fed by almost nothing
    proj[:, 7] *= 0.01  # neuron 7 read by almost nothing
    return fc, (torch.randn(H, generator=g) if bias else None), proj


def _mlp(fc, b, proj, x, zero=None):
    a = F.gelu(F.linear(x, fc, b))
    if zero is not None:
        a[..., zero] = 0.0
    return a @ proj.T


def _close(a, b):
    return torch.is_tensor(a) and a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-6)


def score_hint(fc, b, proj, got):
    if not (torch.is_tensor(got) and got.shape == (H,)):
        return f"return one score per hidden neuron, shape ({H},); proj_weight is (C, H): neuron i is its column i"
    fed = fc.pow(2).sum(1) + (b.pow(2) if b is not None else 0)
    if _close(got, fed.sqrt()):
        return "count what leaves the neuron too: column i of proj_weight (C, H), not only c_fc's row"
    if b is not None and _close(got, (fc.pow(2).sum(1) + proj.pow(2).sum(0)).sqrt()):
        return "the neuron's bias feeds it too: add fc_bias[i]^2"
    return "the sqrt of the sum of squares of c_fc's row i, fc_bias[i] and c_proj's column i"


def prune_hint(fc, b, proj, kept, got, want):
    if not (isinstance(got, tuple) and len(got) == 3 and torch.is_tensor(got[0]) and torch.is_tensor(got[2])
            and got[0].shape == want[0].shape and got[2].shape == want[2].shape):
        return "return (fc_weight[kept] (H', C), fc_bias[kept], proj_weight[:, kept] (C, H')): rows of c_fc, columns of c_proj"
    if torch.equal(got[0], want[0]) and torch.equal(got[2], proj[:, :len(kept)]):
        return "proj_weight's columns must be the kept neurons too (proj_weight[:, kept]), not the first H'"
    if b is not None and not _close(got[1], want[1]):
        return "the bias of a kept neuron goes with it: fc_bias[kept]"
    return "index the kept neurons: fc_weight[kept], fc_bias[kept], proj_weight[:, kept]"


def cases(impl):
    ref = reference()
    for bias in (True, False):
        fc, b, proj = _weights(bias)
        want = ref.magnitude_scores(fc, b, proj)
        got, error = call(impl.magnitude_scores, fc, b, proj)
        ok = error is None and _close(got, want)
        yield f"magnitude_scores ({'with' if bias else 'without'} bias)", ok, want, got if error is None else error, \
            None if ok else (error or score_hint(fc, b, proj, got))
    scores = torch.tensor([0.5, 3.0, 1.0, 3.0, 0.1, 2.0, 0.7, 0.2, 4.0, 0.9, 1.5, 0.3])
    for keep in (0.5, 0.25, 0.3, 0.625, 0.04, 1.0):  # 3.6 and 7.5 neurons: rounded to 4 and 8
        want = ref.keep_indices(scores, keep).tolist()
        got, error = call(impl.keep_indices, scores, keep)
        got = got.tolist() if error is None and torch.is_tensor(got) else (error or got)
        ok = got == want
        if ok or error is not None:
            hint = error
        elif isinstance(got, list) and sorted(got) == want:
            hint = "return the kept indices in increasing order (sort them): the neurons keep their order"
        elif isinstance(got, list) and len(got) != len(want):
            hint = "keep floor(keep * H + 0.5) neurons, at least 1"
        else:
            hint = "keep the highest scores (argsort descending, stable: the earlier of a tie), as a LongTensor"
        yield f"keep_indices(keep={keep})", ok, want, got, None if ok else hint
    for bias in (True, False):
        fc, b, proj = _weights(bias, seed=1)
        kept = torch.tensor([0, 2, 3, 5, 8, 9, 11])
        dropped = [i for i in range(H) if i not in kept.tolist()]
        want = ref.prune_mlp(fc, b, proj, kept)
        got, error = call(impl.prune_mlp, fc, b, proj, kept)
        ok = error is None and isinstance(got, tuple) and len(got) == 3 and _close(got[0], want[0]) and \
            _close(got[2], want[2]) and ((got[1] is None) if b is None else _close(got[1], want[1]))
        hint = None if ok else (error or prune_hint(fc, b, proj, kept, got, want))
        yield f"prune_mlp ({'with' if bias else 'without'} bias): the kept rows and columns", ok, \
            [None if t is None else tuple(t.shape) for t in want], got if error is None else error, hint
        if ok:  # the property that defines it, on inputs
            x = torch.randn(3, 5, C, generator=torch.Generator().manual_seed(2))
            same = torch.allclose(_mlp(*got, x), _mlp(fc, b, proj, x, zero=dropped), atol=1e-5)
            yield f"prune_mlp ({'with' if bias else 'without'} bias) = the original with the dropped neurons zeroed", \
                same, "equal outputs", "equal" if same else "differ", None if same else hint
