"""TTRL and ETTRL: GRPO on majority-vote rewards, and ETTRL's entropy-based advantage reshaping.

Test-time RL (TTRL; Zuo et al., 2025, arXiv 2504.16084) trains on unlabeled prompts: the group's
majority answer is the pseudo-label and agreement with it the reward (the ``majority_vote``
reward, with ``data.label_free: true``). ETTRL (Liu et al., 2025, arXiv 2508.11356) adds two
things: entropy-forked tree rollouts (``rollout.sampler: entropy_tree``, :mod:`rlkit.rollout.tree`)
and **Entropy-based Advantage Reshaping (EAR)**, here. With ``H̄_i`` the mean token entropy of
response i and ``H̄_grp`` the mean of ``H̄_j`` over its group:

    A_i     = (r_i − mean_j r_j) / (std_j r_j + 1e-6)          (unbiased std, as TTRL's verl code)
    Adv-Res:  Y_i = 1 + (H̄_grp − H̄_i) / H̄_grp = 2 − H̄_i / H̄_grp,   Â_i = Y_i · A_i
    Adv-Clip: Â_i = clip(A_i, −β, β),   β = 2

Confident (low-entropy) responses get larger advantages, uncertain ones smaller, whatever the
sign; against the group's own entropy, so no per-model scale is tuned. Adv-Res is ETTRL's main
method, Adv-Clip its ablation. The loss is GRPO's, with TTRL's settings: token-mean aggregation
(``loss_type: dapo``), PPO clip 0.2 and a k3 KL of weight 0.001 to the initial policy.

Sources and decisions (the paper's code was not published; two independent notes agree on the
formulas):

* ``H_t`` is the entropy of the distribution each token was sampled from, as the rollout engine
  reports it (the worker records it for every token). At temperature 1 without top-k/top-p
  that is the policy's own entropy, exactly; the spec's alternative, the learner's entropy from
  its forward, would move the advantage into the loss and off the driver, where every other
  estimator runs.
* The paper's Y has no floor: a response with more than twice its group's mean entropy gets a
  negative Y, which flips its advantage's sign. ``gain_floor`` (default None, the paper's
  formula) clamps Y from below; 0.0 is our recommended guard, a named option of ours.
* A group whose mean entropy is 0 (every response certain) keeps its plain advantages (Y = 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlkit.advantages import group_relative
from rlkit.objectives.grpo import GRPO, GRPOConfig
from rlkit.plugins import advantage_estimator, objective

RESHAPINGS = ("res", "clip", "none")


@dataclass
class TTRLConfig(GRPOConfig):
    beta: float = field(default=0.001, metadata={
        "help": "weight of the k3 KL to the initial policy (TTRL's low_var_kl 0.001)"})
    loss_type: str = field(default="dapo", metadata={
        "help": "dapo: token-mean over the step's loss tokens (TTRL's token-mean)"})
    advantage_estimator: str = field(default="ear", metadata={
        "help": "advantage estimator: ear (group-relative with std + std_eps, then the reshaping below)"})
    reshaping: str = field(default="none", metadata={
        "help": "ETTRL's advantage reshaping: res (Adv-Res, scale by 2 - mean entropy / group's), clip "
                "(Adv-Clip, clip to [-clip_beta, clip_beta]) or none (TTRL)"})
    clip_beta: float = field(default=2.0, metadata={"help": "Adv-Clip's bound β"})
    gain_floor: float | None = field(default=None, metadata={
        "help": "lower bound on Adv-Res's gain Y (None = the paper's formula, unbounded; 0.0 keeps a very "
                "uncertain response's advantage from flipping sign: ours)"})
    std_eps: float = field(default=1e-6, metadata={
        "help": "added to the group's std before dividing (TTRL's verl code: 1e-6)"})

    def __post_init__(self):
        super().__post_init__()
        if self.reshaping not in RESHAPINGS:
            raise ValueError(f"reshaping must be one of {', '.join(RESHAPINGS)}, got {self.reshaping!r}")
        if self.clip_beta <= 0:
            raise ValueError(f"clip_beta must be > 0, got {self.clip_beta}")
        if self.std_eps < 0:
            raise ValueError(f"std_eps must be >= 0, got {self.std_eps}")


@dataclass
class ETTRLConfig(TTRLConfig):
    reshaping: str = field(default="res", metadata={
        "help": "ETTRL's advantage reshaping: res (Adv-Res, the main method), clip (Adv-Clip, the "
                "ablation) or none (TTRL)"})


def entropy_gain(mean_entropy: torch.Tensor, floor: float | None = None) -> torch.Tensor:
    """Adv-Res's Y = 2 − H̄_i / H̄_grp per completion of ``[num_groups, G]`` mean entropies."""
    group = mean_entropy.mean(dim=1, keepdim=True)
    gain = torch.where(group > 0, 2 - mean_entropy / group.clamp(min=torch.finfo(group.dtype).tiny),
                       torch.ones_like(mean_entropy))
    return gain if floor is None else gain.clamp(min=floor)


@advantage_estimator("ear", needs_entropy=True)
def entropy_reshaped(rewards: torch.Tensor, config, mean_entropy: torch.Tensor) -> torch.Tensor:
    """ETTRL's EAR on group-relative advantages (see the module docstring); ``reshaping: none`` is TTRL."""
    advantages = group_relative(rewards, scale=getattr(config, "scale_rewards", True),
                                eps=getattr(config, "std_eps", 1e-6))
    reshaping = getattr(config, "reshaping", "res")
    if reshaping == "res":
        return entropy_gain(mean_entropy.to(advantages.dtype), getattr(config, "gain_floor", None)) * advantages
    if reshaping == "clip":
        beta = getattr(config, "clip_beta", 2.0)
        return advantages.clamp(-beta, beta)
    return advantages


@objective("ttrl")
class TTRL(GRPO):
    """TTRL: GRPO with TTRL's settings, for majority-vote rewards on unlabeled prompts.

    See this module's docstring; ``reshaping`` defaults to none. Pair with ``data.label_free: true``
    and ``rewards.funcs: [majority_vote]`` (the ``ettrl-arith`` recipe shows the whole setup).
    """

    name = "ttrl"
    config_class = TTRLConfig


@objective("ettrl")
class ETTRL(TTRL):
    """ETTRL's objective: TTRL with entropy-based advantage reshaping (Adv-Res by default).

    Its rollout half is ``rollout.sampler: entropy_tree``; see this module's docstring and
    ``docs/objectives/ettrl.md``.
    """

    name = "ettrl"
    config_class = ETTRLConfig
