"""Grader of exercises/curriculum_pacing.py: against batches.seqlen_at at the steps of
tests/test_curriculum.py, and the properties that define it (constant tokens per micro-batch,
block_size exactly from `iters` on, never shrinking)."""

import math
import numbers


def reference():
    from types import SimpleNamespace

    from batches import seqlen_at as repo_seqlen_at

    return SimpleNamespace(seqlen_at=lambda it, start, block_size, iters, pacing, tokens:
                           repo_seqlen_at(it, start, block_size, iters, pacing, tokens))


# (start, block_size, iters, tokens): batch 12 x block 64 (lengths 8 16 24 32 48 64), and
# batch 8 x block 128 = 1024, a power of 2, where the lengths can only double (16 32 64 128)
SETTINGS = [(8, 64, 100, 768), (16, 128, 40, 1024)]
STEPS = {"linear": (0, 25, 50, 75, 99, 100, 500), "root": (4, 25, 81), "step": (0, 24, 25, 49, 50, 74, 75, 99, 100)}


def _pace(it, iters, pacing):
    p = min(it / iters, 1.0)
    return {"linear": p, "root": math.sqrt(p), "step": math.floor(4 * p) / 4, "root-squared": p * p}[pacing]


def _raw(it, start, block_size, iters, pacing):
    return start + _pace(it, iters, pacing) * (block_size - start)


def hint(it, start, block_size, iters, pacing, tokens, got):
    if not isinstance(got, numbers.Integral) or isinstance(got, bool):
        return "return an int: the length slices the windows"
    if it >= iters:
        return "from step `iters` on the length is block_size"
    raw = _raw(it, start, block_size, iters, pacing)
    allowed = [n for n in range(start, block_size + 1, 8) if tokens % n == 0]
    if got == min((n for n in allowed if n >= raw), default=None):
        return "that rounds up: take the largest allowed length <= raw (never longer than the pacing says)"
    if got in (start + 8 * math.floor((raw - start) / 8), 8 * math.floor(raw / 8)) and tokens % got:
        return f"the length must also divide tokens={tokens} (a multiple of 8 alone leaves a partial window)"
    if pacing == "root" and got == max(n for n in allowed if n <= _raw(it, start, block_size, iters, "root-squared")):
        return "root pacing is sqrt(p) (faster early), not p ** 2"
    return "compare with the docstring: p = it / iters, pace, raw, the largest allowed length <= raw"


def cases(impl):
    ref = reference().seqlen_at
    for start, block_size, iters, tokens in SETTINGS:
        for pacing, steps in STEPS.items():
            for it in steps:
                it = it * iters // 100  # the same fractions of the warmup in each setting
                args = (it, start, block_size, iters, pacing, tokens)
                want, got = ref(*args), impl.seqlen_at(*args)
                ok = isinstance(got, numbers.Integral) and not isinstance(got, bool) and got == want
                yield f"{pacing}, step {it} of {iters} ({start} -> {block_size}, tokens {tokens})", ok, want, got, \
                    None if ok else hint(*args, got)
        for pacing in STEPS:
            lengths = [impl.seqlen_at(it, start, block_size, iters, pacing, tokens) for it in range(iters + 5)]
            bad = [(it, n) for it, n in enumerate(lengths) if n % 8 or tokens // n * n != tokens]
            ok = not bad
            yield f"{pacing}: every length a multiple of 8 dividing tokens={tokens}", ok, "no step", \
                bad[:3], None if ok else f"the length must divide tokens={tokens}, so that the tokens per micro-batch stay the same"
            ok = lengths[iters:] == [block_size] * 5 and max(lengths[:iters]) < block_size
            early = next((it for it, n in enumerate(lengths) if n == block_size), None)
            yield f"{pacing}: block_size {block_size} exactly from step {iters} on", ok, iters, early, \
                None if ok else ("block_size before `iters`: round down, not up" if early is not None and early < iters
                                 else "from step `iters` on return block_size")
            ok = lengths == sorted(lengths)
            yield f"{pacing}: never shrinks", ok, "non-decreasing", lengths, \
                None if ok else "the length follows the pacing, which never decreases"
