"""
Knowledge distillation (Hinton et al. 2015): a small student learns from a larger
teacher's whole next-token distribution ("soft labels"), not only from the one token that
came next.

    python train.py configs/distill_teacher.py                                # 1. the teacher
    python distill.py cache --teacher=out-distill/teacher --k=32              # 2. its top-k logits, once
    python train.py configs/distill_student.py --kd_alpha=0.5 --kd_temperature=2 \\
        --soft_labels=out-distill/teacher/soft_labels                          # 3a. student, from the cache
    python train.py configs/distill_student.py --kd_alpha=0.5 --kd_temperature=2 \\
        --teacher=out-distill/teacher --out_dir=out-distill/student-online     # 3b. or an online teacher
    python train.py configs/distill_student.py --init_from=out-distill/student --kd_alpha=0 ...  # 4. hard labels only

The training objective (train.py): kd_alpha * KD + (1 - kd_alpha) * cross-entropy on the
hard labels; kd_alpha = 0 is plain training. KD losses, all per token, in fp32:
  forward_kl  T^2 KL(p_t || p_s)           Hinton's; p = softmax(logits / T)
  reverse_kl  T^2 KL(p_s || p_t)           mode-seeking (MiniLLM, Gu et al. 2024)
  jsd         T^2 (beta KL(p_t || m) + (1 - beta) KL(p_s || m)),  m = beta p_t + (1 - beta) p_s
              (the generalised JSD of GKD, Agarwal et al. 2024)
Why T^2: the gradient of KL(p_t || p_s) with respect to the student's logits s is
(p_s - p_t) / T, and p_s - p_t itself shrinks like 1/T for large T (Hinton, section 2.1),
so the soft term's gradients scale as 1/T^2; multiplying by T^2 keeps their size, and so
the balance with the hard-label term, independent of T. Forward KL's gradient per token is
then exactly T (p_s - p_t) (tested).

The soft-label cache (`distill.py cache`) runs the teacher once over the training split,
in consecutive windows of block_size tokens, and keeps each position's k largest logits
(fp16) and their token ids. The logits are stored before any temperature, so one cache
serves several T (with the bucket below: those it was made for). A student trained from
the cache samples whole cached windows (batches.AlignedWindows), so the context the teacher saw at
a position is exactly the context the student sees there.

The tail, the V - k logits a top-k cache leaves out, is handled one of two ways (kd_tail):
  bucket  (default) the tail becomes one more outcome, "any other token". The cache stores
          its mass exactly: logsumexp(tail logits / T) per position, in fp32, for each T in
          --tail_temperatures (the mass at one T cannot be computed from the mass at another
          without the tail's logits, so the T's are chosen when caching; 1,2,4 by default).
          Teacher and student are then compared as distributions over k + 1 outcomes; only
          how each spreads mass inside the tail is lost. A tail of one token is exact.
  renorm  the tail is dropped and the teacher renormalised over its k tokens. For forward KL
          the student's log-probabilities at those k are its full-vocabulary ones, so the
          student is pushed to move all its mass onto the teacher's top k: at small k and
          T > 1 this is a confident, wrong target (measured in the README). Reverse KL and
          JSD renormalise the student over the same k too, since they need one support.
With k = vocab both equal the online loss (tested).
"""

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.nn import functional as F

from batches import AlignedWindows, RandomWindows, check_length, load_dataset, tokens_sha256, windows_at  # noqa: F401 (AlignedWindows: still importable from here)
from checkpoint import file_sha256, read_checkpoint
from errors import UserError, cli
from model import GPT, GPTConfig
from tokenizer import same_tokenizer

KD_KINDS = ("forward_kl", "reverse_kl", "jsd")


@dataclass
class KDConfig:
    """The distillation keys of a train.py run (config.py merges them into the one flat key
    space): loss = kd_alpha * KD + (1 - kd_alpha) * cross-entropy."""

    teacher: str = ""  # run folder of a teacher that runs on every batch (online KD)
    soft_labels: str = ""  # or a soft-label cache folder (python distill.py cache ...)
    kd_alpha: float = 0.0  # weight of the KD term; 0 = plain training
    kd_temperature: float = 1.0  # T: both distributions are softmax(logits / T); the loss is scaled by T^2
    kd_loss: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    kd_jsd_beta: float = 0.5  # jsd: the mixture weight of the teacher
    kd_top_k: int = 0  # soft_labels: use the cache's top kd_top_k logits per position (0 = all it holds)
    kd_tail: Literal["bucket", "renorm"] = "bucket"  # soft_labels: the mass past the top k as one "other" outcome, or dropped
    # on-policy distillation (GKD, Agarwal et al. 2024): a fraction of the micro-batches are the student's own text
    kd_on_policy: float = 0.0  # lambda: the share of micro-batches that are student rollouts scored by the teacher
    kd_rollout_len: int = 32  # tokens the student generates after each prompt (the rest of the window is the prompt)
    kd_prompts: str = ""  # a dataset whose training split gives the rollouts' prompts ("": the micro-batch's own windows)

    def __post_init__(self):
        # written as "not (inside the domain)", so that a NaN fails too
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ValueError(f"kd_alpha={self.kd_alpha} must be in [0, 1]")
        if self.teacher and self.soft_labels:
            raise ValueError("teacher and soft_labels are two sources of the same soft labels: give one")
        if self.kd_alpha > 0 and not (self.teacher or self.soft_labels):
            raise ValueError(f"kd_alpha={self.kd_alpha} needs soft labels: set teacher=<run folder> or soft_labels=<cache>")
        if not self.kd_temperature > 0:
            raise ValueError(f"kd_temperature={self.kd_temperature} must be > 0")
        if not 0.0 < self.kd_jsd_beta < 1.0:
            raise ValueError(f"kd_jsd_beta={self.kd_jsd_beta} must be in (0, 1)")
        if self.kd_top_k < 0:
            raise ValueError(f"kd_top_k={self.kd_top_k} must be >= 0")
        if not 0.0 <= self.kd_on_policy <= 1.0:
            raise ValueError(f"kd_on_policy={self.kd_on_policy} must be in [0, 1] (the share of on-policy micro-batches)")
        if self.kd_on_policy > 0 and not self.teacher:
            raise ValueError(f"kd_on_policy={self.kd_on_policy} needs an online teacher (--teacher=<run folder>): "
                             f"a soft-label cache holds the data's contexts, not the student's own text")
        if self.kd_rollout_len < 1:
            raise ValueError(f"kd_rollout_len={self.kd_rollout_len} must be >= 1")
        if self.kd_prompts and not self.kd_on_policy > 0:
            raise ValueError(f"kd_prompts={self.kd_prompts} gives prompts to rollouts: it needs kd_on_policy > 0")


# ----------------------------------------------------------------------------------------
# the losses


def _divergence(log_p_t, log_q_s, kind, beta):
    """Per-position divergence between teacher (log_p_t) and student (log_q_s) log-probs
    on the same support (..., K) -> (...)."""
    p_t, q_s = log_p_t.exp(), log_q_s.exp()
    if kind == "forward_kl":
        return torch.sum(p_t * (log_p_t - log_q_s), dim=-1)
    if kind == "reverse_kl":
        return torch.sum(q_s * (log_q_s - log_p_t), dim=-1)
    if kind == "jsd":
        # log m = log(beta p_t + (1 - beta) q_s), computed from the logs for stability
        log_m = torch.logsumexp(torch.stack([log_p_t + math.log(beta), log_q_s + math.log1p(-beta)]), dim=0)
        return beta * torch.sum(p_t * (log_p_t - log_m), -1) + (1 - beta) * torch.sum(q_s * (log_q_s - log_m), -1)
    raise ValueError(f"kd_loss='{kind}': use one of {', '.join(KD_KINDS)}")


def _masked_mean(per_position, mask):
    if mask is None:
        return per_position.mean()
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp_min(1.0)


def kd_loss(student_logits, teacher_logits, temperature=1.0, kind="forward_kl", beta=0.5, mask=None):
    """KD loss between full logits (..., V), averaged over positions where mask is True
    (all if None), times T^2. Computed in fp32 whatever the logits' dtype."""
    T = temperature
    with torch.autocast(student_logits.device.type, enabled=False):
        log_q_s = F.log_softmax(student_logits.float() / T, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.float() / T, dim=-1)
        return _masked_mean(_divergence(log_p_t, log_q_s, kind, beta), mask) * T * T


def kd_loss_topk(student_logits, top_values, top_indices, temperature=1.0, kind="forward_kl", beta=0.5, mask=None,
                 tail_logsumexp=None):
    """KD loss against a teacher known only by its top-k logits (values (..., k), token ids
    (..., k)), with the tail the k leave out handled one of two ways:
      tail_logsumexp given (..., ): the "other" bucket. It is logsumexp(teacher tail logits / T),
        the teacher's tail mass before normalisation, so the teacher becomes a distribution
        over k + 1 outcomes (its k tokens and "any other token"), exact at every outcome;
        the student is the same k + 1 outcomes of its own full distribution (its k
        probabilities there and the sum of all the rest). What is lost is only how each
        distributes mass inside the tail.
      None: renormalise. The teacher's tail is dropped and its k probabilities renormalised.
        Forward KL uses the student's full-vocabulary log-probs at the k tokens (mass it puts
        elsewhere is still penalised); reverse KL and JSD renormalise the student over the
        same k, since they need a shared support.
    With k = vocab both are exactly kd_loss."""
    T = temperature
    with torch.autocast(student_logits.device.type, enabled=False):
        log_q_full = F.log_softmax(student_logits.float() / T, dim=-1)
        idx = top_indices.long()
        log_q_s = log_q_full.gather(-1, idx)  # (..., k)
        t_scaled = top_values.float() / T
        if tail_logsumexp is not None and idx.shape[-1] < log_q_full.shape[-1]:
            # the bucket: log of the student's mass off the k tokens, summed from its own log-probs
            log_q_tail = torch.logsumexp(log_q_full.scatter(-1, idx, float("-inf")), dim=-1, keepdim=True)
            log_q_s = torch.cat([log_q_s, log_q_tail], dim=-1)  # (..., k + 1)
            t_scaled = torch.cat([t_scaled, tail_logsumexp.float().unsqueeze(-1)], dim=-1)
        elif kind != "forward_kl":
            log_q_s = log_q_s - torch.logsumexp(log_q_s, dim=-1, keepdim=True)
        log_p_t = F.log_softmax(t_scaled, dim=-1)
        return _masked_mean(_divergence(log_p_t, log_q_s, kind, beta), mask) * T * T


# ----------------------------------------------------------------------------------------
# teachers: online, or a soft-label cache


def check_same_tokenizer(teacher_meta, data_meta, where):
    """A teacher must speak the student data's vocabulary: compare the tokenizers."""
    if not same_tokenizer(teacher_meta, data_meta):
        raise ValueError(
            f"the teacher in {where} uses another vocabulary than the student's data: teacher "
            f"{teacher_meta.get('tokenizer')} tokenizer with vocab_size={teacher_meta.get('vocab_size')}, data "
            f"{data_meta.get('tokenizer')} tokenizer with vocab_size={data_meta.get('vocab_size')}; distill only "
            f"between models of one tokenizer"
        )


def load_teacher(run_dir, data_meta, device="cpu"):
    """The teacher of run_dir/ckpt.pt: frozen (no parameter requires grad), in eval mode
    (no dropout). A teacher trained with another tokenizer is a ValueError."""
    path = os.path.join(run_dir, "ckpt.pt")
    if not os.path.exists(path):
        raise ValueError(f"teacher: no checkpoint at {path} (train the teacher first)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "peft_base" in ckpt:
        raise ValueError(f"teacher {run_dir} is a PEFT run; export it first: python export.py --out_dir={run_dir} --to=DIR")
    check_same_tokenizer(ckpt["meta"], data_meta, run_dir)
    with torch.random.fork_rng(devices=[]):  # building it draws init weights: leave the student's RNG as it was
        model = GPT(GPTConfig(**{**ckpt["model_config"], "dropout": 0.0}))
    model.load_state_dict(ckpt["model"])
    model.requires_grad_(False)
    return model.eval().to(device), ckpt


class OnlineTeacher:
    """Runs the teacher on each student batch (under the student's autocast). prompts: the
    training tokens that on-policy rollouts start from (kd_prompts), or None for the
    micro-batch's own windows; seed: where their windows are drawn."""

    def __init__(self, model, prompts=None, seed=0):
        self.model, self.prompts, self.seed = model, prompts, seed

    def loss(self, student_logits, x, y, starts, cfg):
        with torch.no_grad():  # the teacher's forward only: the KD loss itself must reach the student
            teacher_logits, _ = self.model(x)
        return kd_loss(student_logits, teacher_logits, cfg.kd_temperature, cfg.kd_loss, cfg.kd_jsd_beta, y != -1)

    def on_policy_batch(self, run_model, x, y, k, cfg, terms=None):
        """(x, y, True) with x, y the student's rollout from micro-batch k's windows (or from
        windows of kd_prompts) when k is an on-policy turn (kd_on_policy), else (x, y, False)
        as they came. The rollout's seconds go to terms["rollout_s"], apart from the update's."""
        if not on_policy_turn(k, cfg.kd_on_policy):
            return x, y, False
        student = getattr(run_model, "module", run_model)  # DDP's wrapped module
        student = getattr(student, "_orig_mod", student)  # torch.compile's
        t0 = time.perf_counter()
        if self.prompts is not None:  # prompts of another domain (forgetting recovery): windows drawn by k (and
            # the rank) alone, so that a resumed run draws the same ones without a generator state to save
            B, T = x.shape
            rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + k * world + rank)
            starts = torch.randint(len(self.prompts) - T, (B,), generator=g).numpy()
            x = windows_at(self.prompts, starts, np.arange(T + 1), str(x.device))[0]  # (B, T)
        x, y = rollout(student, x, cfg.kd_rollout_len)
        if terms is not None:
            terms["rollout_s"] = terms.get("rollout_s", 0.0) + torch.tensor(time.perf_counter() - t0)
        return x, y, True


class CachedTeacher:
    """Reads a soft-label cache: the teacher's top-k logits at every position of the
    training split's consecutive block_size windows, and (for the "other" bucket) the
    logsumexp of the rest at the temperatures the cache was made for."""

    TAILS = ("bucket", "renorm")

    def __init__(self, folder, data_meta, block_size, k=None, tail="bucket", temperature=1.0, data=None):
        """data: the training split the student will read; given, it must be the one the
        cache was made on (its length and sha256 are compared), not only the same tokenizer."""
        meta_path = os.path.join(folder, "meta.json")
        if not os.path.exists(meta_path):
            raise ValueError(f"soft_labels: no cache at {folder} (make one: python distill.py cache --teacher=DIR)")
        with open(meta_path) as f:
            self.meta = json.load(f)
        check_same_tokenizer(self.meta["data_meta"], data_meta, f"the cache {folder}")
        if data is not None:
            self.check_data(folder, data)
        if self.meta["block_size"] != block_size:
            raise ValueError(f"the cache {folder} holds windows of {self.meta['block_size']} tokens; train the student "
                             f"with block_size={self.meta['block_size']} (it has {block_size}) so contexts line up")
        n, kc = self.meta["positions"], self.meta["k"]
        self.k = kc if k is None else k
        if not 1 <= self.k <= kc:
            raise ValueError(f"kd_top_k={self.k}: the cache {folder} holds the top {kc} logits per position")
        if tail not in self.TAILS:
            raise ValueError(f"kd_tail='{tail}': use one of {', '.join(self.TAILS)}")
        self.values = np.memmap(os.path.join(folder, "values.f16"), dtype=np.float16, mode="r", shape=(n, kc))
        self.indices = np.memmap(os.path.join(folder, "indices.i32"), dtype=np.int32, mode="r", shape=(n, kc))
        self.n_windows = n // block_size
        self.block_size = block_size
        self.temperature = temperature
        # the bucket needs the mass of the logits past the k used: those cached past k (their
        # logsumexp at T, from the values) and those never cached (tail.f32, stored per T)
        self.bucket = tail == "bucket" and self.k < data_meta["vocab_size"]
        self.tail_column = None
        temps = self.meta.get("tail_temperatures", [])
        if self.bucket and kc < data_meta["vocab_size"]:
            matches = [j for j, t in enumerate(temps) if math.isclose(t, temperature)]
            if not matches:
                raise ValueError(
                    f"kd_tail=bucket at kd_temperature={temperature:g}: the cache {folder} holds the tail's mass "
                    f"for T in {temps or 'none'}; remake it with --tail_temperatures including {temperature:g}, "
                    f"or set kd_tail=renorm")
            self.tail_column = matches[0]
            self.tails = np.memmap(os.path.join(folder, "tail.f32"), dtype=np.float32, mode="r",
                                   shape=(n, len(temps)))

    def check_data(self, folder, data):
        """Refuse a cache made on other tokens: its soft labels would be the teacher's
        predictions for another text, position by position."""
        remake = f"remake it on this data: python distill.py cache --teacher={self.meta['teacher']} --dataset=..."
        if "data_sha256" not in self.meta:
            raise ValueError(f"the cache {folder} does not record which data it was made on (an older cache); {remake}")
        if self.meta["data_tokens"] != len(data) or self.meta["data_sha256"] != tokens_sha256(data):
            raise ValueError(f"the cache {folder} was made on another training split ({self.meta['data_tokens']:,} "
                             f"tokens, sha256 {self.meta['data_sha256'][:12]}) than this run's ({len(data):,} tokens, "
                             f"sha256 {tokens_sha256(data)[:12]}); {remake}")

    def lookup(self, starts, device):
        """Top-k (values, ids) at the positions of the windows beginning at `starts`:
        (B, T, k) each, and for the bucket the tail's logsumexp at the temperature (B, T),
        else None. The cache is sorted by value, so its first k are the top k."""
        rows = starts[:, None] + np.arange(self.block_size)  # (B, T) positions in the split
        v_all = torch.from_numpy(self.values[rows].astype(np.float32))  # (B, T, kc)
        i = torch.from_numpy(self.indices[rows][..., : self.k].astype(np.int64)).to(device)
        tail = None
        if self.bucket:
            tail = torch.logsumexp(v_all[..., self.k:] / self.temperature, dim=-1)  # cached, past k (may be empty)
            if self.tail_column is not None:  # never cached
                tail = torch.logaddexp(tail, torch.from_numpy(self.tails[rows, self.tail_column].astype(np.float32)))
            tail = tail.to(device)
        return v_all[..., : self.k].to(device), i, tail

    def loss(self, student_logits, x, y, starts, cfg):
        v, i, tail = self.lookup(starts, student_logits.device)
        return kd_loss_topk(student_logits, v, i, cfg.kd_temperature, cfg.kd_loss, cfg.kd_jsd_beta, y != -1, tail)


def make_teacher(kd, data_meta, block_size, device, data, seed=0):
    """The teacher a KDConfig names for a student of context block_size trained on the tokens
    `data`: a CachedTeacher (soft_labels; its batches then come from AlignedWindows), an
    OnlineTeacher (teacher; seed draws kd_prompts' windows) or None. A mismatch (cache made on
    other data, a teacher with a shorter context, prompts of another tokenizer) is a ValueError."""
    if kd.soft_labels:
        return CachedTeacher(kd.soft_labels, data_meta, block_size, kd.kd_top_k or None, kd.kd_tail, kd.kd_temperature,
                             data=data)
    if kd.teacher:
        model = load_teacher(kd.teacher, data_meta, device)[0]
        if model.config.block_size < block_size:
            raise ValueError(f"the teacher in {kd.teacher} reads at most {model.config.block_size} tokens of context, "
                             f"the student {block_size}: it cannot label the student's windows; train the student "
                             f"with block_size <= {model.config.block_size}")
        prompts, meta = load_dataset(kd.kd_prompts)[::2] if kd.kd_prompts else (None, data_meta)  # rollouts' prompts
        if not same_tokenizer(meta, data_meta):
            raise ValueError(f"kd_prompts={kd.kd_prompts} is tokenized with {meta.get('tokenizer')} (vocab_size="
                             f"{meta.get('vocab_size')}), the student's data with {data_meta.get('tokenizer')} "
                             f"(vocab_size={data_meta.get('vocab_size')}): give prompts of the student's tokenizer")
        if prompts is not None:
            check_length(prompts, block_size, f"kd_prompts={kd.kd_prompts}'s training split")
        return OnlineTeacher(model, prompts, seed)
    return None


@torch.no_grad()
def build_cache(teacher_dir, data, data_meta, out_dir, k, batch_size=32, device="cpu", dtype=torch.float32,
                teacher_sha256=None, tail_temperatures=(1.0, 2.0, 4.0)):
    """Run the teacher over `data` in consecutive windows of its block_size and write, per
    position, its top-k logits (values.f16, sorted, before temperature) and their ids
    (indices.i32), the logsumexp of the other V - k logits / T for each T in
    tail_temperatures (tail.f32, fp32; -inf when k = V), and meta.json last."""
    model, ckpt = load_teacher(teacher_dir, data_meta, device)
    T, V = model.config.block_size, model.config.vocab_size
    k = min(k, V)
    n_windows = (len(data) - 1) // T
    n = n_windows * T
    temps = [float(t) for t in tail_temperatures]
    os.makedirs(out_dir, exist_ok=True)
    vals = np.memmap(os.path.join(out_dir, "values.f16"), dtype=np.float16, mode="w+", shape=(n, k))
    idxs = np.memmap(os.path.join(out_dir, "indices.i32"), dtype=np.int32, mode="w+", shape=(n, k))
    tails = np.memmap(os.path.join(out_dir, "tail.f32"), dtype=np.float32, mode="w+", shape=(n, max(len(temps), 1)))
    ctx = torch.autocast(device.split(":")[0], dtype=dtype) if dtype != torch.float32 else torch.autocast("cpu", enabled=False)
    for w0 in range(0, n_windows, batch_size):
        w = np.arange(w0, min(w0 + batch_size, n_windows))
        x = torch.from_numpy(data[(w * T)[:, None] + np.arange(T)].astype(np.int64)).to(device)
        with ctx:
            logits, _ = model(x)  # (b, T, V)
        logits = logits.float()
        top_v, top_i = logits.topk(k, dim=-1)  # sorted, largest first
        rest = logits.scatter(-1, top_i, float("-inf"))  # the tail: the V - k logits not kept
        rows = slice(w0 * T, (w0 + len(w)) * T)
        vals[rows] = top_v.reshape(-1, k).cpu().numpy().astype(np.float16)
        idxs[rows] = top_i.reshape(-1, k).cpu().numpy().astype(np.int32)
        if temps:
            tail = torch.stack([torch.logsumexp(rest / t, dim=-1) for t in temps], dim=-1)  # (b, T, n_temps)
            tails[rows] = tail.reshape(-1, len(temps)).cpu().numpy()
    for m in (vals, idxs, tails):
        m.flush()
    meta = {"teacher": os.path.abspath(teacher_dir), "teacher_sha256": teacher_sha256,
            "k": k, "block_size": T, "positions": n, "windows": n_windows, "data_meta": data_meta,
            "data_tokens": len(data), "data_sha256": tokens_sha256(data),  # which text: CachedTeacher checks it
            "tail_temperatures": temps,
            "note": "values: raw logits (before temperature), top-k sorted descending; tail: logsumexp of the "
                    "other logits / T per tail temperature; window w = positions [w*T, (w+1)*T)"}
    with open(os.path.join(out_dir, "meta.json.tmp"), "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(os.path.join(out_dir, "meta.json.tmp"), os.path.join(out_dir, "meta.json"))
    return meta


# ----------------------------------------------------------------------------------------
# on-policy distillation: the student's own text, scored by the teacher


def on_policy_turn(k, share):
    """Whether micro-batch number k (counted over the whole run) is a rollout: a share of
    them, spread evenly and decided by k alone, so a resumed run chooses as the first did."""
    return math.floor((k + 1) * share) > math.floor(k * share)


@torch.no_grad()
def rollout(student, x, rollout_len):
    """The student's own text as a training batch (GKD, Agarwal et al. 2024, Algorithm 1):
    the first T + 1 - rollout_len tokens of each window x (B, T) are kept as the prompt, the
    student samples rollout_len tokens after it (temperature 1, the global RNG, which
    checkpoints save: a resumed run samples the same), and the result comes back as (x, y)
    like any batch, with y = -1 wherever the target is still prompt, so that the loss covers
    the generated tokens only. No gradient flows through the sampling."""
    B, T = x.shape
    prompt_len = T + 1 - rollout_len
    if prompt_len < 1:
        raise ValueError(f"kd_rollout_len={rollout_len} leaves no prompt in a window of block_size={T}: "
                         f"use kd_rollout_len <= {T}")
    was_training = student.training
    student.eval()  # sampling without dropout
    seq = student.generate(x[:, :prompt_len], rollout_len)  # (B, T + 1)
    student.train(was_training)
    x_new, y_new = seq[:, :-1].clone(), seq[:, 1:].clone()
    y_new[:, :prompt_len - 1] = -1  # targets inside the prompt: not the student's text
    return x_new, y_new


# ----------------------------------------------------------------------------------------
# judging generations: how likely the teacher finds a text


@torch.no_grad()
def teacher_log_likelihood(teacher, ids, n_prompt, batch_size=64):
    """The teacher's mean log-probability per token of ids (a list of token ids) over the
    positions t >= n_prompt (the generated ones), each token given the up to block_size
    tokens before it: mean_t log p_teacher(x_t | x_<t). Higher is a text more like the
    teacher's own; on the student's samples it measures what on-policy distillation trains
    for (GKD, Agarwal et al. 2024), where val loss measures the data's contexts."""
    T, x = teacher.config.block_size, torch.tensor(ids, dtype=torch.long)
    n_prompt = max(n_prompt, 1)  # the first token has no context to be predicted from
    head = x[:T][None]  # the first T tokens: one causal pass scores positions 1 .. T-1
    logp = teacher(head)[0].log_softmax(-1)[0, :-1].gather(-1, head[0, 1:, None])[:, 0]  # (T-1,)
    scores = [logp[n_prompt - 1:]]
    later = list(range(max(T, n_prompt), len(x)))  # past one context: each token after its last T
    for i in range(0, len(later), batch_size):
        ts = torch.tensor(later[i:i + batch_size])
        windows = x[ts[:, None] - T + torch.arange(T)]  # (b, T): x[t-T .. t-1]
        last = teacher(windows)[0][:, -1].log_softmax(-1)  # (b, V)
        scores.append(last.gather(-1, x[ts][:, None])[:, 0])
    scores = torch.cat(scores)
    return scores.mean().item(), len(scores)


# ----------------------------------------------------------------------------------------
# sequence-level KD: a corpus the teacher wrote


@torch.no_grad()
def generate_corpus(teacher_dir, out_dir, tokens, prompt_len=16, temperature=1.0, top_k=None, seed=1337,
                    batch_size=32, dataset=None):
    """Sequence-level KD (Kim & Rush 2016, section 3.2): the teacher continues prompts drawn
    from its training data, and the prompts with their continuations become a dataset folder
    (train.bin, val.bin, meta.json with the teacher's tokenizer) that a student trains on with
    the ordinary loop. Each sample is prompt_len tokens of real text and block_size - prompt_len
    generated ones, batched, seeded; samples are joined by a newline. Returns the meta."""
    from tokenizer import prepare_dataset, tokenizer_from_meta

    if dataset is None:  # the teacher's own data: its config, without reading its tensors
        dataset = read_checkpoint(os.path.join(teacher_dir, "ckpt.pt"), "distill.py generate", mmap=True)["config"]["dataset"]
    data, _, data_meta = load_dataset(dataset)
    model, ckpt = load_teacher(teacher_dir, data_meta)  # refuses data of another tokenizer
    T = ckpt["model_config"]["block_size"]
    if not 0 < prompt_len < T:
        raise ValueError(f"--prompt_len={prompt_len} must be in [1, block_size={T}): the rest is generated")
    tok = tokenizer_from_meta(ckpt["meta"])
    gen = torch.Generator().manual_seed(seed)
    starts = RandomWindows(data, batch_size, prompt_len, "cpu", seed)  # its x: batch_size windows of prompt_len
    samples, written = [], 0
    while written < tokens:
        prompts = starts.next()[0]  # (B, prompt_len) real tokens
        out = model.generate(prompts, T - prompt_len, temperature=temperature, top_k=top_k, generator=gen)
        for row in out.tolist():
            samples.append(tok.decode(row))
            written += len(row)
    text = "\n".join(samples)
    source = (f"teacher-generated: {os.path.abspath(teacher_dir)}, {len(samples)} samples of {prompt_len} prompt + "
              f"{T - prompt_len} generated tokens, temperature {temperature}, top_k {top_k}, seed {seed}")
    return prepare_dataset(text, out_dir, tokenizer=tok, source=source, verbose=False)


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description="distillation steps that are not plain training")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache", help="run the teacher once over a training split; keep its top-k logits")
    c.add_argument("--teacher", required=True, help="the teacher's run folder")
    c.add_argument("--dataset", default=None, help="default: the teacher's own dataset")
    c.add_argument("--k", type=int, default=32, help="logits kept per position (the vocabulary size keeps all)")
    c.add_argument("--out", default=None, help="default: <teacher>/soft_labels")
    c.add_argument("--tail_temperatures", default="1,2,4",
                   help="the T's at which to store the tail's mass, for kd_tail=bucket (comma-separated)")
    c.add_argument("--batch_size", type=int, default=32)
    g = sub.add_parser("generate", help="a dataset the teacher wrote: sequence-level KD (Kim & Rush 2016)")
    g.add_argument("--teacher", required=True, help="the teacher's run folder")
    g.add_argument("--out", required=True, help="the dataset folder to write (train.bin, val.bin, meta.json)")
    g.add_argument("--tokens", type=int, default=200_000, help="about this many tokens in all (default 200,000)")
    g.add_argument("--prompt_len", type=int, default=16, help="real tokens each sample starts from")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top_k", type=int, default=0, help="sample from the top k tokens only (0: all)")
    g.add_argument("--seed", type=int, default=1337)
    g.add_argument("--dataset", default=None, help="where the prompts come from (default: the teacher's dataset)")
    g.add_argument("--batch_size", type=int, default=32)
    args = p.parse_args(argv)
    if args.cmd == "generate":
        if args.tokens < 1 or args.top_k < 0 or not args.temperature >= 0 or args.batch_size < 1:
            raise UserError("--tokens and --batch_size must be >= 1, --top_k >= 0, --temperature >= 0")
        try:
            m = generate_corpus(args.teacher, args.out, args.tokens, args.prompt_len, args.temperature,
                                args.top_k or None, args.seed, args.batch_size, args.dataset)
        except ValueError as e:
            raise UserError(str(e)) from None
        print(f"wrote {args.out}: {m['train_tokens']:,} train and {m['val_tokens']:,} val tokens the teacher wrote "
              f"(train a student on it: python train.py ... --dataset={args.out})")
        return
    ckpt = read_checkpoint(os.path.join(args.teacher, "ckpt.pt"), why="distill.py cache")
    dataset = args.dataset or ckpt["config"]["dataset"]
    data, _, meta = load_dataset(dataset)
    out = args.out or os.path.join(args.teacher, "soft_labels")
    if args.k < 1:
        raise UserError(f"--k={args.k} must be >= 1")
    try:
        temps = [float(t) for t in args.tail_temperatures.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--tail_temperatures={args.tail_temperatures}: give numbers, e.g. 1,2,4") from None
    if any(not t > 0 for t in temps):
        raise UserError(f"--tail_temperatures={args.tail_temperatures}: temperatures must be > 0")
    try:
        m = build_cache(args.teacher, data, meta, out, args.k, args.batch_size,
                        teacher_sha256=file_sha256(os.path.join(args.teacher, "ckpt.pt")), tail_temperatures=temps)
    except ValueError as e:
        raise UserError(str(e)) from None
    size = sum(os.path.getsize(os.path.join(out, f)) for f in ("values.f16", "indices.i32", "tail.f32"))
    print(f"wrote {out}: top-{m['k']} logits at {m['positions']:,} positions ({m['windows']:,} windows of "
          f"{m['block_size']}), {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
