"""Zero-variance groups and DAPO's dynamic sampling, as pure functions on trl's generation batches.

A GRPO group whose rewards all agree (every completion right, or every one wrong) has advantage 0
everywhere: it costs a generation and a backward and moves nothing but the KL term. A sharp SFT
policy makes many of them (it samples the same answer in every generation). DAPO (arXiv
2503.14476, "dynamic sampling") drops such groups and keeps sampling new prompts until the batch
is full of groups with variance, up to a bound (`max_num_gen_batches`, 10 in its recipe).

`AudioGRPOTrainer` (train/grpo.py) calls these: after trl scored a generation batch it finds the
zero-variance groups from the rewards of the whole batch (every rank sees them all, so every rank
takes the same decisions and runs the same number of generation rounds: no rank waits in a
collective the others skip), generates a further batch of newly drawn prompts while some rank is
short, and assembles each rank's batch from its own groups with variance, refills next, and, when
the bound is hit, its zero-variance groups last (counted as unfilled). Each rank holds whole groups
(checked in train/config.py), so a group is kept or dropped as a whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

# trl's generation-batch keys whose rows are left-padded (the prompt); every other per-row tensor is
# right-padded (completion tokens, their log-probs) or has equal lengths (audio features of one window).
LEFT_PADDED = ("prompt_ids", "prompt_mask")
TOKEN_KEYS = ("prompt_ids", "completion_ids")  # padded with the pad token id, everything else with 0
RECOMPUTED = ("num_items_in_batch",)  # a scalar over the whole batch: the caller recounts it


def group_has_variance(rewards: torch.Tensor, num_generations: int, tol: float = 1e-6) -> torch.Tensor:
    """One bool per group of `num_generations` consecutive rewards: do they differ at all?

    Compared by range, not by trl's `isclose(std, 0)` (whose std of equal floats can come out a few
    ulps above zero); NaN rewards (unscorable completions) are ignored as trl's baseline ignores them.
    """
    grouped = rewards.view(-1, num_generations)
    valid = ~torch.isnan(grouped)
    high = torch.where(valid, grouped, -torch.inf).max(dim=1).values
    low = torch.where(valid, grouped, torch.inf).min(dim=1).values
    spread = (high - low).nan_to_num(0.0, posinf=0.0, neginf=0.0)
    return spread > tol * torch.clamp(high.abs().nan_to_num(0.0, posinf=0.0, neginf=0.0), min=1.0)


def zero_variance_share(rewards: torch.Tensor, num_generations: int) -> float:
    """Share of groups whose rewards all agree; trl's `frac_reward_zero_std` counts the same groups
    (by completions, hence the same share) for each batch it scores."""
    has_variance = group_has_variance(rewards, num_generations)
    return float((~has_variance).float().mean()) if has_variance.numel() else 0.0


@dataclass
class RankPlan:
    """Which groups one rank trains on: (round, group index within that round's local batch)."""

    groups: list[tuple[int, int]] = field(default_factory=list)
    refilled: int = 0  # groups taken from refill rounds
    unfilled: int = 0  # zero-variance groups kept because the bound was hit


@dataclass
class SamplingState:
    """The rounds generated so far for one step, as every rank sees them (global has-variance flags)."""

    world_size: int
    groups_per_rank: int
    rounds: list[torch.Tensor] = field(default_factory=list)  # per round: one bool per global group

    def add_round(self, has_variance: torch.Tensor) -> None:
        expected = self.world_size * self.groups_per_rank
        if has_variance.numel() != expected:
            raise ValueError(f"a round has {has_variance.numel()} groups, expected {expected}")
        self.rounds.append(has_variance.bool().cpu())

    def _local(self, round_index: int, rank: int) -> torch.Tensor:
        start = rank * self.groups_per_rank
        return self.rounds[round_index][start : start + self.groups_per_rank]

    def usable(self, rank: int) -> int:
        """Groups with variance this rank has over every round so far."""
        return sum(int(self._local(r, rank).sum()) for r in range(len(self.rounds)))

    def short(self) -> bool:
        """Does any rank still have fewer groups with variance than it trains on?"""
        return any(self.usable(rank) < self.groups_per_rank for rank in range(self.world_size))

    def generated(self) -> int:
        """Groups generated over all rounds and ranks."""
        return sum(r.numel() for r in self.rounds)

    def dropped(self) -> int:
        """Zero-variance groups sampled over all rounds and ranks."""
        return sum(int((~r).sum()) for r in self.rounds)

    def plan(self, rank: int) -> RankPlan:
        """Groups with variance first (the sampled batch's, then refills in order), then, if still
        short, the sampled batch's own zero-variance groups."""
        out = RankPlan()
        for r in range(len(self.rounds)):
            for g in torch.nonzero(self._local(r, rank)).flatten().tolist():
                if len(out.groups) < self.groups_per_rank:
                    out.groups.append((r, g))
                    out.refilled += r > 0
        for g in torch.nonzero(~self._local(0, rank)).flatten().tolist():
            if len(out.groups) < self.groups_per_rank:
                out.groups.append((0, g))
                out.unfilled += 1
        return out


def refill_prompt_indices(n_prompts: int, dataset_size: int, *, seed: int, step: int, round_index: int,
                          rank: int) -> list[int]:  # fmt: skip
    """Dataset rows for one refill round on one rank: distinct, seeded by (seed, step, round, rank)
    so a resumed run draws the same prompts (no sampler state to checkpoint)."""
    rng = np.random.default_rng([seed, step, round_index, rank])
    return rng.choice(dataset_size, size=min(n_prompts, dataset_size), replace=False).tolist()


def _pad_last_dim(tensor: torch.Tensor, length: int, value: float, left: bool) -> torch.Tensor:
    missing = length - tensor.size(-1)
    if missing <= 0:
        return tensor
    pad = tensor.new_full((*tensor.shape[:-1], missing), value)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=-1)


def concat_rows(parts: Sequence[dict], pad_token_id: int) -> dict:
    """Concatenate generation batches row-wise, padding each key's last dimension to the longest.

    Keys are trl's output of `_generate_and_score_completions` plus the audio features; a key this
    does not know how to join (a non-tensor, or a 0-d tensor other than those the caller recounts)
    is an error rather than a silently misaligned batch.
    """
    out: dict = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if key in RECOMPUTED:
            continue
        if not all(isinstance(v, torch.Tensor) and v.dim() >= 1 for v in values):
            raise TypeError(
                f"dynamic sampling cannot join {key!r} across generation rounds: not a per-row tensor"
            )
        if values[0].dim() >= 2:
            length = max(v.size(-1) for v in values)
            value = pad_token_id if key in TOKEN_KEYS else 0
            values = [_pad_last_dim(v, length, value, left=key in LEFT_PADDED) for v in values]
        out[key] = torch.cat(values, dim=0)
    return out


def take_groups(batch: dict, groups: Sequence[int], num_generations: int) -> dict:
    """The rows of the given local groups (each `num_generations` consecutive rows) of one batch."""
    rows = torch.tensor(
        [g * num_generations + i for g in groups for i in range(num_generations)], dtype=torch.long
    )
    out = {}
    for key, value in batch.items():
        if key in RECOMPUTED:
            continue
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            raise TypeError(f"dynamic sampling cannot select rows of {key!r}: not a per-row tensor")
        out[key] = value.index_select(0, rows.to(value.device))
    return out
