"""Mixture-of-experts feed-forward layer and its three routers.

The router kinds are the paper's ablation behind one switch:
- ``modality``: logits from the token plus its modality embedding, plus a learned per-modality
  bias initialised towards that modality's own experts (what made experts specialise);
- ``positional``: logits from the token plus its position embedding;
- ``deterministic``: a fixed modality-to-expert assignment, no learned routing.
Every layer returns its routing decisions so that they can be counted (report, pruning).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.config import RouterKind

__all__ = ["Mlp", "MoE", "Router", "RouterOutput", "expert_groups"]


class Mlp(nn.Module):
    """The transformer feed-forward layer; also one expert of a MoE layer."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def expert_groups(num_experts: int, num_modalities: int) -> list[list[int]]:
    """Experts owned by each modality: contiguous, near-equal groups (12 experts, 6 modalities: pairs)."""
    bounds = [round(i * num_experts / num_modalities) for i in range(num_modalities + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(num_modalities)]


@dataclass
class RouterOutput:
    """Routing of N tokens: chosen experts and their gate weights, plus what the balancing loss needs."""

    experts: torch.Tensor  # (N, k) int64
    weights: torch.Tensor  # (N, k)
    probs: torch.Tensor | None  # (N, E) router probabilities; None for the fixed router


class Router(nn.Module):
    """Chooses ``top_k`` experts per token from the token and its routing context."""

    def __init__(
        self, dim: int, num_experts: int, num_modalities: int, kind: RouterKind, top_k: int, prior: float
    ) -> None:
        super().__init__()
        self.kind, self.num_experts, self.top_k = kind, num_experts, top_k
        groups = expert_groups(num_experts, num_modalities)
        if kind == "deterministic":
            # Modality m's tokens go to its own experts, spread over the group by position.
            table = torch.zeros(num_modalities, max(map(len, groups)), dtype=torch.long)
            for m, group in enumerate(groups):
                table[m] = torch.tensor(group * (table.shape[1] // len(group) + 1))[: table.shape[1]]
            self.register_buffer("assignment", table)
            self.register_buffer("group_size", torch.tensor([len(g) for g in groups]))
            return
        self.gate = nn.Linear(dim, num_experts, bias=False)
        # Set by pruning: logits of the dropped experts, kept only so that the softmax (and hence
        # every gate weight) stays what the full model computed; they can never be chosen.
        self.dropped: nn.Linear | None = None
        self.dropped_bias: nn.Parameter | None = None
        if kind == "modality":
            bias = torch.zeros(num_modalities, num_experts)
            for m, group in enumerate(groups):
                bias[m, group] = prior
            self.modality_bias = nn.Parameter(bias)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None, modality: torch.Tensor, position: torch.Tensor
    ) -> RouterOutput:
        """Route tokens ``x`` (N, D); ``context`` is the modality or position embedding of each token."""
        if self.kind == "deterministic":
            slot = position % self.group_size[modality]
            experts = self.assignment[modality, slot].unsqueeze(1)
            return RouterOutput(experts, torch.ones(experts.shape, dtype=x.dtype, device=x.device), None)
        routed = x if context is None else x + context
        logits = self.gate(routed)
        if self.kind == "modality":
            logits = logits + self.modality_bias[modality]
        if self.dropped is not None:
            dropped = self.dropped(routed)
            if self.dropped_bias is not None:
                dropped = dropped + self.dropped_bias[modality]
            probs = torch.cat([logits, dropped], dim=-1).softmax(dim=-1)[:, : logits.shape[-1]]
        else:
            probs = logits.softmax(dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return RouterOutput(experts, weights, probs)


class MoE(nn.Module):
    """A feed-forward layer made of ``num_experts`` MLPs, each token sent to its ``top_k`` experts."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        num_experts: int,
        num_modalities: int,
        router: RouterKind,
        top_k: int,
        router_prior: float,
    ) -> None:
        super().__init__()
        self.router = Router(dim, num_experts, num_modalities, router, top_k, router_prior)
        self.experts = nn.ModuleList(Mlp(dim, hidden) for _ in range(num_experts))
        #: Run every expert on every token and mask by the gates (no data-dependent shapes): the
        #: same result as the sparse dispatch, at the cost of every kept expert on every token.
        #: The sparse dispatch exports too (ONNX NonZero/Gather/ScatterND) and is the engine form.
        self.dense = False

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None, modality: torch.Tensor, position: torch.Tensor
    ) -> tuple[torch.Tensor, RouterOutput, torch.Tensor]:
        """Returns the output (N, D), the routing and the load-balancing loss of N flattened tokens."""
        route = self.router(x, context, modality, position)
        if self.dense:
            gates = torch.zeros(x.shape[0], len(self.experts), dtype=x.dtype, device=x.device)
            gates = gates.scatter_add(1, route.experts, route.weights)
            out = sum(gates[:, e, None] * expert(x) for e, expert in enumerate(self.experts))
            return out, route, x.new_zeros(())
        # An expert no token chose is skipped in eager mode; an exported graph keeps every branch
        # (the count is only known at run time, and an empty gather costs nothing).
        exporting = torch.compiler.is_exporting()
        out = torch.zeros_like(x)
        if route.experts.shape[1] == 1:
            # Top-1: every token has exactly one expert, so its row is written once, not summed
            # (in ONNX a plain ScatterND and Gathers, no summing reduction).
            chosen = route.experts[:, 0]
            for e, expert in enumerate(self.experts):
                token = torch.nonzero(chosen == e).squeeze(1)
                if exporting or token.numel():
                    out = out.index_put((token,), expert(x.index_select(0, token)) * route.weights.index_select(0, token))
            return out, route, self.balance_loss(route)
        for e, expert in enumerate(self.experts):
            token, slot = torch.nonzero(route.experts == e, as_tuple=True)
            if exporting or token.numel():
                out.index_add_(0, token, expert(x[token]) * route.weights[token, slot, None])
        return out, route, self.balance_loss(route)

    def balance_loss(self, route: RouterOutput) -> torch.Tensor:
        """Switch-Transformer balancing loss: E * sum_e (share of assignments to e) * (mean prob of e).

        It is 1 for a perfectly balanced router and grows as tokens pile onto a few experts; the
        fixed router has nothing to balance.
        """
        if route.probs is None:
            return route.weights.new_zeros(())
        counts = torch.bincount(route.experts.flatten(), minlength=len(self.experts)).to(route.probs.dtype)
        share = counts / counts.sum().clamp(min=1)
        return len(self.experts) * (share * route.probs.mean(dim=0)).sum()
