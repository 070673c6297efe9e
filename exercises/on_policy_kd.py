"""
Exercise: the on-policy distillation loss (the README's "Knowledge distillation", on-policy;
GKD, Agarwal et al. 2024): the student writes, the teacher judges every token it wrote.

Read distill.rollout and distill.kd_loss only after you have tried.
Grade: python -m exercises check on_policy_kd
"""

import torch  # noqa: F401  (you will need it)


def rollout_batch(seq, prompt_len):
    """A student's rollout as a training batch. seq (B, T + 1) is each prompt (its first
    prompt_len tokens) followed by the tokens the student sampled. Return (x, y), both
    (B, T): x = seq without its last token, y = seq without its first (next-token targets),
    with y set to -1 wherever the target is still a prompt token, so that only the
    generated tokens are trained on. (Which y positions are those? y[:, t] is seq[:, t + 1].)"""
    raise NotImplementedError("exercises/on_policy_kd.py: rollout_batch")


def reverse_kl(student_logits, teacher_logits, y):
    """The on-policy loss: the per-token reverse KL, KL(p_s || p_t) = sum_v p_s(v) (log p_s(v)
    - log p_t(v)), with p = softmax(logits) over the vocabulary (temperature 1), averaged over
    the positions whose target y is not -1. student_logits, teacher_logits: (B, T, V); y:
    (B, T). Return a scalar tensor that carries the student's gradient (the teacher's logits
    are a fixed target). Compute with log_softmax, not log(softmax): it stays finite."""
    raise NotImplementedError("exercises/on_policy_kd.py: reverse_kl")
