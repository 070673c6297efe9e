"""
Mixture of experts for the feed-forward sublayer: many expert MLPs, and a router that
sends each token to k of them, so parameters grow while the compute per token stays that
of k small MLPs.

    from moe import MoE
    moe = MoE(n_embd=128, hidden=256, n_experts=8, top_k=2)           # top-k routing (dropless)
    moe = MoE(n_embd=128, hidden=512, n_experts=8, router="switch")   # Switch: top-1 with capacity
    y, aux = moe(x)        # x, y: (B, T, C); aux["loss"] = balancing + z losses, already weighted

Used by model.py (GPTConfig.moe_num_experts > 0 turns every moe_every-th block's MLP into
an MoE); measured by bench.py --moe and experiments/moe_experiment.py.

Routers
- top-k (Shazeer et al. 2017; Mixtral, Jiang et al. 2024): softmax over the router logits,
  the k most probable experts, their probabilities renormalised to sum to 1 (what Mixtral
  computes as a softmax over the k chosen logits). Optional noisy top-k (Shazeer eq. 4):
  Gaussian noise with a learned, softplus'd scale added to the logits, in training only.
  Dropless: every token reaches its k experts.
- Switch (Fedus et al. 2021): top-1, the gate is the chosen expert's probability (not
  renormalised, so the router gets a gradient through it). Each expert takes at most
  capacity = ceil(capacity_factor * tokens / experts) tokens (eq. 3), with one factor in
  training and another in eval. Tokens are admitted in order of position in the flattened
  (B*T) batch, first come first served; a token over capacity skips the expert and its
  MoE output is zero, so the block's residual connection carries it through unchanged.

Losses (returned, never stored in a global: an inference forward cannot leak into training)
- load balancing (Switch eq. 4): aux_loss_coef * N * sum_i f_i * P_i, with f_i the fraction
  of routed (token, expert) pairs that chose expert i and P_i the mean router probability
  of expert i (from the full softmax). Perfectly balanced routing gives exactly 1 * coef.
- router z-loss (ST-MoE, Zoph et al. 2022, eq. 5): z_loss_coef * mean over tokens of
  logsumexp(logits)^2, which keeps the router logits small and the softmax stable.
The router computes in fp32 even under autocast ("selective precision", Switch section 2.4).

Dispatch without per-token loops: the (token, expert) pairs are sorted by expert, each
pair's slot within its expert is its rank in that group, the tokens are gathered into a
(n_experts, capacity, C) buffer, the experts run as two batched matmuls (bmm) over it, and
the results are scattered back, times their gates, with index_add.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F


class MoE(nn.Module):
    def __init__(self, n_embd, hidden, n_experts, top_k=2, router="topk", capacity_factor=1.25,
                 eval_capacity_factor=2.0, aux_loss_coef=1e-2, z_loss_coef=1e-3, noisy=False,
                 shared_expert=False, init_scale=1.0, bias=False):
        super().__init__()
        if router not in ("topk", "switch"):
            raise ValueError(f"router='{router}': use 'topk' or 'switch'")
        if router == "switch" and top_k != 1:
            raise ValueError(f"the Switch router sends each token to one expert; top_k={top_k} must be 1")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k={top_k} must be between 1 and n_experts={n_experts}")
        self.n_experts, self.top_k, self.router_kind = n_experts, top_k, router
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.aux_loss_coef, self.z_loss_coef = aux_loss_coef, z_loss_coef
        self.out_features = n_embd  # the output width (peft.apply_adapters reads it: the router is a Linear too)
        self.router = nn.Linear(n_embd, n_experts, bias=False)
        self.noise = nn.Linear(n_embd, n_experts, bias=False) if noisy else None
        # no GPT has a router bias, bias=True included: BitFit leaves these two alone (peft.apply_bitfit)
        self.router.bitfit_skip = True
        if noisy:
            self.noise.bitfit_skip = True
        # the experts' weights, batched: (E, C, H) up and (E, H, C) down
        self.w_fc = nn.Parameter(torch.empty(n_experts, n_embd, hidden))
        self.w_proj = nn.Parameter(torch.empty(n_experts, hidden, n_embd))
        self.b_fc = nn.Parameter(torch.zeros(n_experts, 1, hidden)) if bias else None
        self.b_proj = nn.Parameter(torch.zeros(n_experts, 1, n_embd)) if bias else None
        # N(0, 0.02) as every GPT-2 matrix (GPT re-initialises w_proj with its residual scaling),
        # times init_scale: Switch (section 2.6) scales the init down by 0.1 for stability
        nn.init.normal_(self.w_fc, std=0.02 * init_scale)
        nn.init.normal_(self.w_proj, std=0.02 * init_scale)
        nn.init.normal_(self.router.weight, std=0.02)
        self.shared = None
        if shared_expert:  # DeepSeekMoE (Dai et al. 2024): one expert that every token uses
            self.shared = nn.Sequential(nn.Linear(n_embd, hidden, bias=bias), nn.GELU(),
                                        nn.Linear(hidden, n_embd, bias=bias))
            self.shared[2].residual_projection = True

    def bitfit_biases(self):
        """BitFit: the experts' biases, made (as zeros, so nothing changes) where the MoE was
        built without them; it then has the parameters of a bias=True MoE. Returns their names."""
        for name, width in (("b_fc", self.w_fc.shape[-1]), ("b_proj", self.w_proj.shape[-1])):
            if getattr(self, name) is None:
                w = self.w_fc
                setattr(self, name, nn.Parameter(torch.zeros(self.n_experts, 1, width, device=w.device, dtype=w.dtype)))
        return ("b_fc", "b_proj")

    # ------------------------------------------------------------------------------------
    # routing

    def route(self, x):
        """x: (N, C) -> (expert ids (N, k), gates (N, k), probs (N, E), logits (N, E)), in fp32."""
        with torch.autocast(x.device.type, enabled=False):
            # through the modules, not their .weight: PEFT may wrap them (LoRA on the router)
            logits = self.router(x.float())  # (N, E); the router's weights are fp32
            if self.noise is not None and self.training:
                scale = F.softplus(self.noise(x.float()))
                logits = logits + torch.randn_like(logits) * scale
            probs = logits.softmax(dim=-1)
            top_p, top_i = probs.topk(self.top_k, dim=-1)  # (N, k)
            gates = top_p if self.router_kind == "switch" else top_p / top_p.sum(-1, keepdim=True)
        return top_i, gates, probs, logits

    def capacity(self, n_tokens):
        if self.router_kind == "topk":
            return None  # dropless
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        return math.ceil(factor * n_tokens / self.n_experts)

    # ------------------------------------------------------------------------------------
    # the experts

    def run_experts(self, buf):
        """buf: (E, S, C) tokens grouped by expert -> (E, S, C): each expert's MLP, as two bmm."""
        h = torch.bmm(buf, self.w_fc)  # (E, S, C) x (E, C, H) -> (E, S, H)
        if self.b_fc is not None:
            h = h + self.b_fc
        h = F.gelu(h)
        out = torch.bmm(h, self.w_proj)  # (E, S, H) x (E, H, C) -> (E, S, C)
        if self.b_proj is not None:
            out = out + self.b_proj
        return out

    def forward(self, x):
        """x: (B, T, C) -> (y (B, T, C), aux). aux: "loss" (weighted balancing + z loss, a
        tensor with grad), and detached statistics "aux_loss", "z_loss", "load" (E,),
        "dropped" (fraction of routed pairs over capacity), "entropy" (router, nats)."""
        B, T, C = x.shape
        xf = x.reshape(-1, C)  # (N, C)
        N, E, k = xf.shape[0], self.n_experts, self.top_k
        top_i, gates, probs, logits = self.route(xf)

        # every (token, expert) pair, sorted by expert; a stable sort keeps token order
        # inside each expert's group, which is the first-come order capacity uses
        expert = top_i.reshape(-1)  # (N*k,)
        token = torch.arange(N, device=x.device).repeat_interleave(k)  # (N*k,)
        gate = gates.reshape(-1)
        order = torch.argsort(expert, stable=True)
        expert, token, gate = expert[order], token[order], gate[order]
        counts = torch.bincount(expert, minlength=E)  # (E,) pairs per expert
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(N * k, device=x.device) - starts[expert]  # rank within its expert
        cap = self.capacity(N)
        if cap is None:
            cap = int(counts.max())  # dropless: the buffer holds the busiest expert's tokens
        keep = slot < cap
        n_dropped = (~keep).sum()
        expert, token, gate, slot = expert[keep], token[keep], gate[keep], slot[keep]

        buf = xf.new_zeros(E, cap, C)
        buf[expert, slot] = xf[token]  # gather: (E, cap, C)
        out = self.run_experts(buf)  # (E, cap, C)
        contrib = out[expert, slot] * gate.unsqueeze(-1).to(out.dtype)  # (kept pairs, C)
        y = torch.zeros(N, C, device=x.device, dtype=contrib.dtype).index_add_(0, token, contrib)
        if self.shared is not None:
            y = y + self.shared(xf)

        # losses (Switch eq. 4; ST-MoE eq. 5), in fp32
        f = torch.bincount(top_i.reshape(-1), minlength=E).float() / (N * k)  # routed fraction per expert
        P = probs.mean(dim=0)  # mean router probability per expert
        aux_loss = E * torch.sum(f * P)
        z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        loss = self.aux_loss_coef * aux_loss + self.z_loss_coef * z_loss
        entropy = -(probs * torch.log(probs.clamp_min(1e-9))).sum(-1).mean()
        aux = {
            "loss": loss,
            "aux_loss": aux_loss.detach(),
            "z_loss": z_loss.detach(),
            "load": f.detach(),
            "dropped": n_dropped.float() / (N * k),
            "entropy": entropy.detach(),
        }
        return y.view(B, T, C).to(x.dtype), aux
