"""
Exercise: distilling from top-k soft labels with an "other" bucket (a lesson in
exercises/README.md; do kd_loss first).

Read distill.kd_loss_topk (its tail_logsumexp branch) only after you have tried. Grade:
python -m exercises check topk_soft_labels
"""

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def kd_loss_topk_bucket(student_logits, top_values, top_indices, tail_logsumexp, temperature):
    """The forward-KL distillation loss against a teacher stored as its top-k logits plus one
    number for everything else, at temperature T.

    student_logits: (..., V); top_values, top_indices: (..., k), the teacher's k largest
    logits and their token ids, k < V; tail_logsumexp: (...), logsumexp over the teacher's
    other V - k logits, each divided by T (its tail mass before normalisation). Both become
    distributions over k + 1 outcomes, the k tokens and "any other token":

        teacher:  p = softmax([top_values / T, tail_logsumexp])             (k + 1)
        student:  log q_s = log_softmax(student_logits / T) over the full V;
                  log q = [log q_s at top_indices,  log(sum of q_s over the other V - k tokens)]
        loss = T^2 * mean over positions of  sum over the k + 1 outcomes  p * (log p - log q)

    Returns a scalar, computed in fp32. Keep the student's bucket in log space:
    logsumexp of its log-probs off the k tokens (set those k to -inf first). log(1 - sum
    of its k probabilities) cancels to 0 (log 0 = -inf) when the student is confident.
    Do not drop the bucket and renormalise the k: that throws away how much mass the
    teacher leaves to the tail. With k = V - 1 the loss equals the full kd_loss exactly.
    """
    raise NotImplementedError("exercises/topk_soft_labels.py: kd_loss_topk_bucket")
