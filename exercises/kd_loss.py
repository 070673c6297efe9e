"""
Exercise: the knowledge-distillation loss (lesson 11 in exercises/README.md).

Read distill.kd_loss only after you have tried. Grade: python -m exercises check kd_loss
"""

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def kd_loss(student_logits, teacher_logits, temperature):
    """Hinton et al. (2015)'s distillation loss, forward KL at temperature T:

        p_t = softmax(teacher_logits / T), q_s = softmax(student_logits / T)
        loss = T^2 * mean over positions of  sum_v p_t[v] * (log p_t[v] - log q_s[v])

    logits: (..., V), the same shape for both; returns a scalar. Work with log_softmax (not
    log of softmax: it underflows) and in fp32. Why T^2: the gradient of the softened KL
    with respect to the logits shrinks as 1/T^2 (section 2 of the paper); multiplying by
    T^2 keeps its size independent of T, so that changing T does not change the step size.
    """
    raise NotImplementedError("exercises/kd_loss.py: kd_loss")
