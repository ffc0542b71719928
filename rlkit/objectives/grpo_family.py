"""The GRPO family as named objectives: DAPO, Dr. GRPO and RLOO share GRPO's loss code.

Each is GRPO with other defaults (and, for RLOO, another advantage estimator), so a user can
write ``--objective.name dapo`` instead of remembering which four knobs make DAPO. Every GRPO
knob still applies (``--objective.epsilon_high 0.3``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from rlkit.objectives.grpo import GRPO, GRPOConfig
from rlkit.plugins import objective


@dataclass
class DAPOConfig(GRPOConfig):
    epsilon_high: float | None = field(default=0.28, metadata={
        "help": "upper clip range ε_high (clip-higher: room for low-probability tokens to grow)"})
    loss_type: str = field(default="dapo", metadata={
        "help": "dapo: token sum / loss tokens of the step (token-level aggregation)"})


@objective("dapo")
class DAPO(GRPO):
    """DAPO (Yu et al., 2025): clip-higher, token-level aggregation, dynamic sampling, no KL.

    The loss is GRPO's with ε_low = 0.2, ε_high = 0.28 and ``loss_type: dapo``
    (L = Σ_i Σ_t ℓ_{i,t} / Σ_i |o_i|). Dynamic sampling is the pipeline's job: with
    ``rollout.dynamic_sampling: auto`` (the default) a DAPO run drops every group whose
    completions all scored the same and samples more prompts until the step has
    ``prompts_per_step`` groups that carry a gradient (at most ``rollout.max_sampling_rounds``
    extra rounds; see ``docs/objectives/grpo.md``). The paper's overlong reward shaping is a
    reward, not a loss: combine ``rewards.funcs`` with a length penalty for it.
    """

    name = "dapo"
    config_class = DAPOConfig
    dynamic_sampling_by_default: ClassVar[bool] = True


@dataclass
class DrGRPOConfig(GRPOConfig):
    loss_type: str = field(default="dr_grpo", metadata={
        "help": "dr_grpo: token sum / (sequences x max_completion_length), no length bias"})
    scale_rewards: bool = field(default=False, metadata={
        "help": "False: advantages are group-centred rewards, not divided by the group's std"})


@objective("dr_grpo")
class DrGRPO(GRPO):
    """Dr. GRPO (Liu et al., 2025, "Understanding R1-Zero-Like Training"): GRPO without its two biases.

    A_i = r_i − mean_j r_j (no division by the group std, which over-weights nearly solved or
    nearly hopeless prompts), and L = Σ_i Σ_t ℓ_{i,t} / (N · L_max) (no 1/|o_i|, which favours
    long wrong answers and short right ones). The clipped ratio term is GRPO's.
    """

    name = "dr_grpo"
    config_class = DrGRPOConfig


@dataclass
class RLOOConfig(GRPOConfig):
    advantage_estimator: str = field(default="rloo", metadata={
        "help": "advantage estimator (rlkit list estimators): rloo (leave-one-out baseline) by default"})
    loss_type: str = field(default="dr_grpo", metadata={
        "help": "dr_grpo: each sequence's summed token loss, averaged over sequences (divided by the "
                "constant max_completion_length), i.e. REINFORCE on whole sequences"})


@objective("rloo")
class RLOO(GRPO):
    """RLOO (Ahmadian et al., 2024): REINFORCE with a leave-one-out baseline.

    A_i = r_i − 1/(G−1) Σ_{j≠i} r_j = G/(G−1) · (r_i − mean_j r_j): each sample's baseline is the
    mean of the *other* samples of its prompt, so it is independent of the sample and the
    estimate unbiased. Aggregation defaults to ``dr_grpo`` (sequence sums), as REINFORCE on a
    sequence's log-probability; on-policy the ratio is 1 and the clip never binds.
    """

    name = "rloo"
    config_class = RLOOConfig
