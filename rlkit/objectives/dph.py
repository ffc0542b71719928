"""DPH-RL: a GRPO/DAPO loss on unsolved prompts, a mass-covering divergence to π0 on solved ones.

Li et al., "The Choice of Divergence: A Neglected Key to Mitigating Diversity Collapse in
Reinforcement Learning with Verifiable Reward" (arXiv 2509.07430, ICLR 2026); official code
github.com/seamoke/DPH-RL (a verl fork). Formulas, sources and decisions: docs/objectives/dph.md.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from rlkit.objectives.aggregation import LOSS_TYPES, aggregate, step_normalizer
from rlkit.objectives.base import Objective, PolicyBatch, StepStats
from rlkit.objectives.dph_rehearsal import RehearsalRows
from rlkit.objectives.hooks import ExtraRows, RunAccess
from rlkit.objectives.grpo import GRPOConfig, per_token_loss
from rlkit.plugins import objective, policy_loss

DIVERGENCES = ("forward_kl", "js", "reverse_kl")
KIND_AVERAGING = ("per_kind", "pooled")
FORWARD_KL_ESTIMATORS = ("k3", "k1")
# log u = log πθ − log π0 is capped from above so that exp(log u) cannot overflow. Unlike verl's
# kl_penalty (which the official code calls) there is no lower cap and no cap of k3 at 10: those
# zero the gradient exactly where πθ has dropped a π0 sample (u < e^-11), the case forward KL is for.
MAX_LOG_RATIO = 20.0


@dataclass
class DPHConfig:
    divergence: str = field(default="forward_kl", metadata={
        "help": "divergence to the initial policy π0 on rehearsal rows: forward_kl (KL(π0‖πθ), DPH-F), "
                "js (Jensen-Shannon generator, DPH-JS) or reverse_kl (KL(πθ‖π0) generator, a reference-free "
                "reverse-KL variant on the same stored samples)"})
    weight: float = field(default=0.05, metadata={
        "help": "η, the weight of the divergence term; the official code recommends 0.01-0.05 for forward_kl "
                "and 0.05-0.2 for js (0 = no rehearsal term, i.e. DAPO on the exploration set)"})
    forward_kl_estimator: str = field(default="k3", metadata={
        "help": "per-token estimate of KL(π0‖πθ) on π0's samples: k3 = r − 1 − log r (the official code's "
                "verl low_var_kl, without verl's clamps), k1 = log π0 − log πθ (the paper's likelihood form); "
                "r = πθ/π0. Both have the same expected gradient"})
    epsilon: float = field(default=0.2, metadata={
        "help": "lower clip range ε_low of the exploration rows' clipped ratio"})
    epsilon_high: float | None = field(default=0.28, metadata={
        "help": "upper clip range ε_high (None = epsilon); the official scripts use 0.28 (clip-higher)"})
    loss_type: str = field(default="dapo", metadata={
        "help": "aggregation of both parts over the whole step: dapo (token means, verl's token-mean as in the "
                "official code; see kind_averaging), grpo (per-sequence token mean / sequences) or "
                "dr_grpo (token sum / (sequences x max_completion_length))"})
    kind_averaging: str = field(default="per_kind", metadata={
        "help": "under dapo: per_kind (the official code's micro-batch averaging: each kind of row token-meaned "
                "on its own, the two means weighted by their rows' share of the step) or pooled (rlkit's: one "
                "token mean over both kinds)"})
    scale_rewards: bool = field(default=True, metadata={
        "help": "divide group-centred rewards of exploration groups by the group's std + 1e-4"})
    advantage_estimator: str = field(default="group_relative", metadata={
        "help": "advantage estimator of the exploration groups (rlkit list estimators): group_relative by default"})
    pass_threshold: float = field(default=0.75, metadata={
        "help": "split rule: a prompt whose pass rate under π0 is >= this joins the rehearsal set "
                "(0.75 = 6 of 8, the paper's Llama setting; 0.875 = 7 of 8 for Qwen)"})
    split_samples: int = field(default=8, metadata={
        "help": "samples of π0 per training prompt that measure the pass rate for the split"})
    split_prompts: int = field(default=4096, metadata={
        "help": "training prompts (a seeded sample of the dataset) whose π0 pass rate is measured before "
                "training; only these are trained on. 0 = the whole dataset"})
    rehearsal_samples: int = field(default=1, metadata={
        "help": "fresh π0 samples drawn per rehearsal prompt after the split; only correct ones are "
                "stored (with their π0 log-probs) and prompts with none are dropped"})
    rehearsal_ratio: float = field(default=0.125, metadata={
        "help": "stored π0 samples mixed into a step per exploration rollout (official code: 256 per "
                "128 prompts x 16 rollouts)"})

    def __post_init__(self):
        _one_of("divergence", self.divergence, DIVERGENCES)
        _one_of("kind_averaging", self.kind_averaging, KIND_AVERAGING)
        _one_of("forward_kl_estimator", self.forward_kl_estimator, FORWARD_KL_ESTIMATORS)
        _one_of("loss_type", self.loss_type, LOSS_TYPES)
        if not self.weight >= 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")
        if not 0 <= self.epsilon < 1:
            raise ValueError(f"epsilon must be in [0, 1), got {self.epsilon}")
        if self.epsilon_high is not None and self.epsilon_high < 0:
            raise ValueError(f"epsilon_high must be >= 0 (or None for epsilon), got {self.epsilon_high}")
        if not 0 < self.pass_threshold <= 1:
            raise ValueError(f"pass_threshold must be in (0, 1], got {self.pass_threshold}")
        if self.split_prompts < 0:
            raise ValueError(f"split_prompts must be >= 0 (0 = all), got {self.split_prompts}")
        if self.split_samples < 1 or self.rehearsal_samples < 1:
            raise ValueError(f"split_samples and rehearsal_samples must be >= 1, got "
                             f"{self.split_samples} and {self.rehearsal_samples}")
        if not self.rehearsal_ratio >= 0:
            raise ValueError(f"rehearsal_ratio must be >= 0, got {self.rehearsal_ratio}")

    def policy_gradient_config(self) -> GRPOConfig:
        """The exploration rows' loss: GRPO's clipped ratio with no KL (β = 0)."""
        return GRPOConfig(epsilon=self.epsilon, epsilon_high=self.epsilon_high, beta=0.0,
                          loss_type=self.loss_type, scale_rewards=self.scale_rewards)


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} {value!r} is not one of: {', '.join(choices)}")


# --- per-token divergence terms on π0's samples -----------------------------------------------------
# Each takes the current log-probs log πθ(y_t) (with gradient) and the stored log π0(y_t) of tokens
# sampled from π0, and returns g(u_t) with u_t = πθ(y_t)/π0(y_t), so that the π0-expectation of g
# is the divergence between the two next-token distributions: D_f(πθ‖π0) = E_{y~π0}[f(πθ(y)/π0(y))].
# The generators are shifted by c·(u − 1), whose π0-expectation is 0, so that g(1) = g'(1) = 0: the
# value and expected gradient are unchanged, each sample's term is >= 0 and it is still at u = 1.


def _log_ratio(logprobs: torch.Tensor, init_logprobs: torch.Tensor) -> torch.Tensor:
    return torch.clamp(logprobs - init_logprobs, max=MAX_LOG_RATIO)


@policy_loss("forward_kl_to_initial")
def forward_kl_term(logprobs: torch.Tensor, init_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """KL(π0‖πθ): k3 = u − 1 − log u (the official code's estimator), k1 = −log u = log π0 − log πθ.

    ∂/∂log πθ is u − 1 for k3 (−1 for k1): below π0 (u < 1) the sample's log-prob is pushed up,
    and the push does not fade as u → 0, which is what makes the forward KL mass-covering.
    """
    _one_of("estimator", estimator, FORWARD_KL_ESTIMATORS)
    if estimator == "k1":
        return init_logprobs - logprobs
    log_u = _log_ratio(logprobs, init_logprobs)
    return torch.exp(log_u) - log_u - 1


@policy_loss("js_to_initial")
def js_term(logprobs: torch.Tensor, init_logprobs: torch.Tensor) -> torch.Tensor:
    """2·D_JS generator, the official code's ``js_low_var``: u log u − (u + 1) log((u + 1)/2).

    Its π0-expectation is KL(πθ‖M) + KL(π0‖M) with M = (πθ + π0)/2, twice the JS divergence
    (the paper's generator carries a ½). On u ∈ [0, 1] the term is at most log 2, and its
    gradient u·log(2u/(u + 1)) vanishes as u → 0: a bounded, softer anchor than forward KL.
    """
    log_u = _log_ratio(logprobs, init_logprobs)
    u = torch.exp(log_u)
    return u * log_u - (u + 1) * (torch.log1p(u) - math.log(2.0))


@policy_loss("reverse_kl_to_initial")
def reverse_kl_term(logprobs: torch.Tensor, init_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(πθ‖π0) generator on π0's samples: u log u − u + 1 (gradient u·log u).

    Mode-seeking: a sample the policy has abandoned (u → 0) costs at most 1 and its gradient
    vanishes; a sample the policy over-weights (u > 1) is pushed down.
    """
    log_u = _log_ratio(logprobs, init_logprobs)
    u = torch.exp(log_u)
    return u * log_u - u + 1


def divergence_term(config: DPHConfig, logprobs: torch.Tensor, init_logprobs: torch.Tensor) -> torch.Tensor:
    if config.divergence == "forward_kl":
        return forward_kl_term(logprobs, init_logprobs, config.forward_kl_estimator)
    if config.divergence == "js":
        return js_term(logprobs, init_logprobs)
    return reverse_kl_term(logprobs, init_logprobs)


# --- the data split --------------------------------------------------------------------------------


def split_rehearsal(pass_rates: Mapping[Hashable, float] | Sequence[float],
                    threshold: float = 0.75) -> tuple[list, list]:
    """(rehearsal_ids, exploration_ids): prompts π0 already solves (pass rate >= threshold) and the rest.

    ``pass_rates`` maps prompt id -> fraction of π0's ``split_samples`` samples that were correct
    (a list is indexed by position). Ids keep the input order. A rate equal to the threshold is
    rehearsal (6 of 8 correct with 0.75).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    items = pass_rates.items() if isinstance(pass_rates, Mapping) else enumerate(pass_rates)
    rehearsal, exploration = [], []
    for prompt_id, rate in items:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ValueError(f"pass rate of prompt {prompt_id!r} must be a number in [0, 1], got {rate!r}")
        (rehearsal if rate >= threshold - 1e-9 else exploration).append(prompt_id)
    return rehearsal, exploration


def confirm_rehearsal(rehearsal_ids: Sequence[Hashable],
                      confirmation_correct: Mapping[Hashable, bool]) -> tuple[list, list]:
    """(kept, dropped): a rehearsal prompt stays only if its fresh π0 sample was correct.

    The fresh sample is the one stored for rehearsal; prompts without a correct one are dropped
    from training altogether (the official code's behaviour), not moved to the exploration set.
    """
    kept = [i for i in rehearsal_ids if confirmation_correct.get(i, False)]
    dropped = [i for i in rehearsal_ids if not confirmation_correct.get(i, False)]
    return kept, dropped


# --- the objective ---------------------------------------------------------------------------------


@objective("dph")
class DPH(Objective):
    """Diversity-Preserving Hybrid RL: PG on exploration rows, an f-divergence to π0 on rehearsal rows.

    Rows of a batch are of two kinds (``batch.extra``, [B] bool). An exploration row i is a
    rollout of the current policy on a prompt π0 does not yet solve; a rehearsal row j is a sample
    y ~ π0 of a prompt π0 solves, stored before training with log π0(y_t) in ``stored_logprobs``
    (the objective's extra rows, ``dph_rehearsal.RehearsalRows``).
    With ρ = πθ/π_old, u = πθ/π0 and |y| the loss tokens of a row:

        exploration:  ℓ_{i,t} = −min(ρ_{i,t}·A_i, clip(ρ_{i,t}, 1−ε_low, 1+ε_high)·A_i)     (no KL)
        rehearsal:    ℓ_{j,t} = η · g(u_{j,t}),   g = forward_kl_term | js_term | reverse_kl_term

    Under ``loss_type: dapo`` with ``kind_averaging: per_kind`` (the default, the official code's
    micro-batch averaging: its micro-batches hold one kind each, are token-meaned, then averaged),
    with N_e exploration rows over T_e tokens and N_r rehearsal rows over T_r tokens in the step:

        L = (N_e · Σ_exploration ℓ / T_e  +  N_r · Σ_rehearsal ℓ / T_r) / (N_e + N_r)

    Otherwise both kinds share the step's normalizer (N rows, Σ|y| loss tokens, L_max), as in GRPO:

        dapo (pooled): L = 1/Σ|y| · Σ_rows Σ_t ℓ        grpo:  L = 1/N · Σ_rows (1/|y|) Σ_t ℓ
        dr_grpo:       L = 1/(N·L_max) · Σ_rows Σ_t ℓ

    Either way L = (share of exploration)·L_exp + η·(share of rehearsal)·L_pef: the paper's
    L_exp + η·L_pef with the mix of the step deciding the effective weight (shares of rows per kind,
    or of tokens when pooled). Rehearsal rows get no
    policy-gradient term and exploration rows no divergence; ``old_logprobs`` and ``advantages``
    of rehearsal rows and ``stored_logprobs`` of exploration rows are ignored.
    """

    name = "dph"
    config_class = DPHConfig

    def extra_rows(self, run: RunAccess) -> ExtraRows:
        """The rehearsal rows, collected before the first step (``dph_rehearsal.py``)."""
        return RehearsalRows(self, run)

    def split_prompts(self, pass_rates: Sequence[float]) -> tuple[list, list]:
        """(rehearsal, exploration) prompt positions from π0's pass rates (``split_rehearsal``)."""
        return split_rehearsal(list(pass_rates), self.config.pass_threshold)

    def needs_reference(self) -> bool:
        return False  # π0 enters only through the stored log-probs of its samples

    def zero_advantage_is_inert(self) -> bool:
        return False  # rehearsal rows carry a gradient whatever their advantage

    def loss_sum(self, batch: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch.mask.bool()
        rehearsal = _rehearsal_rows(batch).unsqueeze(1) & mask
        exploration = mask & ~rehearsal
        exploration_rows = exploration.any(dim=1)
        # what an ignored position holds (NaN, garbage) must not reach the loss or its gradient
        logprobs = torch.where(mask, batch.logprobs, torch.zeros_like(batch.logprobs).detach())
        pg_batch = PolicyBatch(
            logprobs=logprobs, mask=batch.mask,
            old_logprobs=torch.where(exploration, batch.old_logprobs, logprobs.detach()),
            advantages=torch.where(exploration_rows, batch.advantages, torch.zeros_like(batch.advantages)))
        pg_loss, parts = per_token_loss(pg_batch, self.config.policy_gradient_config())
        loss = torch.where(exploration, pg_loss, torch.zeros_like(pg_loss))
        if rehearsal.any():
            if batch.stored_logprobs is None:
                raise ValueError("rehearsal rows need the initial policy's log-probs in stored_logprobs")
            init = torch.where(rehearsal, batch.stored_logprobs, logprobs.detach())
            divergence = torch.where(rehearsal, divergence_term(self.config, logprobs, init), torch.zeros_like(loss))
            loss = loss + self.config.weight * self._rehearsal_scale(batch) * divergence
            parts["divergence"] = divergence.detach()
            parts["log_ratio_init"] = (logprobs - init).detach()  # 0 off the rehearsal tokens
        mask_f = mask.to(loss.dtype)
        return aggregate(loss, mask_f, self.config.loss_type), _metrics(parts, exploration, rehearsal, mask_f)

    def _per_kind(self) -> bool:
        return self.config.loss_type == "dapo" and self.config.kind_averaging == "per_kind"

    def _rehearsal_scale(self, batch: PolicyBatch) -> float:
        """1 when pooled. Per kind, with the step's exploration rows N_e over T_e loss tokens and its
        rehearsal rows N_r over T_r: N_r·T_e / (T_r·N_e), which with :meth:`normalizer` makes the step
        loss (N_e·mean_exploration + η·N_r·mean_rehearsal) / (N_e + N_r)."""
        if not self._per_kind():
            return 1.0
        stats = batch.step_stats
        if stats is None or not stats.extra_tokens:
            raise ValueError("kind_averaging per_kind needs the step's totals with the rehearsal rows "
                             "(PolicyBatch.step_stats); the pipeline sends them with the rows")
        return stats.extra_sequences * stats.num_tokens / (stats.extra_tokens * max(stats.num_sequences, 1))

    def normalizer(self, stats: StepStats) -> float:
        if not self._per_kind() or not stats.extra_sequences:
            return step_normalizer(self.config.loss_type, stats)
        # the totals count both kinds (counts_in_step_stats): T_e · N / N_e
        exploration_rows = max(stats.num_sequences - stats.extra_sequences, 1)
        exploration_tokens = max(stats.num_tokens - stats.extra_tokens, 1)
        return exploration_tokens * stats.num_sequences / exploration_rows


def _rehearsal_rows(batch: PolicyBatch) -> torch.Tensor:
    rows = batch.logprobs.shape[0]
    if batch.extra is None:
        return torch.zeros(rows, dtype=torch.bool, device=batch.logprobs.device)
    if batch.extra.shape != (rows,):
        raise ValueError(f"extra must be a [B] = [{rows}] bool tensor, got shape {tuple(batch.extra.shape)}")
    return batch.extra.bool()


def _metrics(parts: dict[str, torch.Tensor], exploration: torch.Tensor, rehearsal: torch.Tensor,
             mask: torch.Tensor) -> dict[str, float]:
    """Means over all loss tokens of per-token values that are 0 on the other kind of row.

    The learner averages a metric over the step weighted by each micro-batch's loss tokens, which
    keeps these exact; divide by ``rehearsal_token_fraction`` (or 1 minus it) for the mean over
    one kind of row alone.
    """
    tokens = mask.sum().clamp(min=1)
    metrics = {"rehearsal_token_fraction": float((rehearsal.to(mask.dtype)).sum() / tokens)}
    for name in ("clip_fraction_low", "clip_fraction_high", "clip_fraction"):
        metrics[name] = float((parts[name] * exploration.to(mask.dtype)).sum() / tokens)
    for name in ("divergence", "log_ratio_init"):
        metrics[name] = float((parts[name] * mask).sum() / tokens) if name in parts else 0.0
    return metrics
