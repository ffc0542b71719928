"""BAPO's bound search and loss against hand-computed numbers and an independent NumPy version."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlkit import plugins
from rlkit.objectives import PolicyBatch, StepStats, objective_from_config
from rlkit.objectives.bapo import BAPO, BAPOConfig, bound_grid, search_clip_bounds
from rlkit.objectives.base import objective_config_fields


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# --- a 3×2 batch with chosen ratios (old log-prob 0, so π_old = 1 and r = exp(logp)) ---------------
# seq 0, A=+1: r = 1.0, 1.5 | seq 1, A=−1: r = 1.0, 0.75 | seq 2, A=−1: r = 0.65, then padding (r = 5)

SMALL_GRID = dict(clip_low_start=0.6, clip_low_max=0.8, clip_low_step=0.1,  # c_low ∈ {0.6, 0.7, 0.8}
                  clip_high_start=1.2, clip_high_max=1.6, clip_high_step=0.2)  # c_high ∈ {1.2, 1.4, 1.6}
# rlkit's reading of the paper (Algorithm 1: upper bound first; Eq. 5's gradient contribution; no
# dual clip), an option since the defaults became the port's; the tests below pin it
PAPER = dict(search_order="upper_first", dual_clip=None, contribution="gradient")


def chosen_ratios(old: list[list[float]] | None = None) -> PolicyBatch:
    ratios = t([[1.0, 1.5], [1.0, 0.75], [0.65, 5.0]])
    old_logprobs = torch.zeros(3, 2, dtype=torch.float64) if old is None else t(old)
    return PolicyBatch(logprobs=ratios.log() + old_logprobs, old_logprobs=old_logprobs,
                       mask=t([[1, 1], [1, 1], [1, 0]]), advantages=t([1.0, -1.0, -1.0]))


def bounds(batch: PolicyBatch, **params):
    config = BAPOConfig(**{**SMALL_GRID, **PAPER, "weight_by_rollout_prob": False, **params})
    return BAPO(config).search(batch)


# The walk: (0.6,1.2) → (0.6,1.4) → (0.6,1.6) → (0.7,1.6) → (0.8,1.6).
# gradient: P(c_high) = Σ_{A>0, r<c_high} r·A = 1, 1, 2.5;  N(c_low) = Σ_{A<0, r>c_low} r·|A| = 2.4, 1.75, 1.0
#           ρ along the walk = 1/3.4, 1/3.4, 2.5/4.9, 2.5/4.25, 2.5/3.5
@pytest.mark.parametrize("target, low, high, share", [
    (0.25, 0.6, 1.2, 1 / 3.4),  # met at the start: no move
    (0.50, 0.6, 1.6, 2.5 / 4.9),  # raising c_high to 1.6 lets the r = 1.5 positive token in
    (0.55, 0.7, 1.6, 2.5 / 4.25),  # c_high exhausted; c_low = 0.7 filters the r = 0.65 negative token
    (0.60, 0.8, 1.6, 2.5 / 3.5),  # c_low = 0.8 filters the r = 0.75 one too
    (0.80, 0.8, 1.6, 2.5 / 3.5),  # unreachable: both bounds end at their maxima
])
def test_gradient_contribution_search_by_hand(target, low, high, share):
    found = bounds(chosen_ratios(), positive_share_target=target)
    assert (found.clip_low, found.clip_high) == (low, high)
    assert found.positive_share == pytest.approx(share, abs=1e-12)
    assert found.initial_share == pytest.approx(1 / 3.4, abs=1e-12)


# surrogate: P = Σ A·min(r, c_high) = 2.2, 2.4, 2.5;  N = Σ |A|·max(r, c_low) = 2.4, 2.45, 2.6
#            ρ along the walk = 2.2/4.6, 2.4/4.8, 2.5/4.9, 2.5/4.95, 2.5/5.1: raising c_low lowers ρ
@pytest.mark.parametrize("target, low, high, share", [
    (0.45, 0.6, 1.2, 2.2 / 4.6),
    (0.505, 0.6, 1.6, 2.5 / 4.9),
    (0.52, 0.8, 1.6, 2.5 / 5.1),  # never met: c_low runs to b− and ρ ends below its c_high-phase best
])
def test_surrogate_contribution_search_by_hand(target, low, high, share):
    found = bounds(chosen_ratios(), positive_share_target=target, contribution="surrogate")
    assert (found.clip_low, found.clip_high) == (low, high)
    assert found.positive_share == pytest.approx(share, abs=1e-12)


def test_rollout_probability_weights_the_contribution():
    # π_old = 0.5 on seq 0, 0.25 on seq 1 and 2 (r unchanged): gradient P = 0.5·(1 + 1.5) at c_high = 1.6,
    # N = 0.25·(1 + 0.75 + 0.65) = 0.6 at c_low = 0.6, so ρ = 1.25/1.85 = 0.6757 meets 0.6 without c_low moving
    old = [[math.log(0.5)] * 2, [math.log(0.25)] * 2, [math.log(0.25)] * 2]
    found = bounds(chosen_ratios(old), positive_share_target=0.6, weight_by_rollout_prob=True)
    assert (found.clip_low, found.clip_high) == (0.6, 1.6)
    assert found.positive_share == pytest.approx(1.25 / 1.85, abs=1e-12)
    assert bounds(chosen_ratios(old), positive_share_target=0.6).clip_low == 0.8  # unweighted: 2.5/3.5 only at 0.8


def test_no_negative_contribution_keeps_the_start_bounds():
    batch = chosen_ratios()
    batch.advantages = t([1.0, 0.0, 0.0])
    found = bounds(batch, positive_share_target=1.0)
    assert (found.clip_low, found.clip_high, found.positive_share) == (0.6, 1.2, 1.0)


def test_fixed_lower_bound_still_lets_the_upper_bound_move():
    # Algorithm 1's loop test c_low + δ2 <= b− would freeze c_high here; rlkit only stops when neither can move
    # c_low = 0.8 throughout: N = 1.0, so ρ = 1/2, 1/2, 2.5/3.5 as c_high takes 1.2, 1.4, 1.6
    found = bounds(chosen_ratios(), positive_share_target=0.6, clip_low_start=0.8, clip_low_max=0.8)
    assert (found.clip_low, found.clip_high) == (0.8, 1.6)
    assert found.positive_share == pytest.approx(2.5 / 3.5, abs=1e-12)


def test_default_grids_end_exactly_at_the_maxima():
    assert bound_grid(1.2, 3.0, 0.05)[-2:] == [2.95, 3.0] and len(bound_grid(1.2, 3.0, 0.05)) == 37
    assert bound_grid(0.6, 0.9, 0.02)[-1] == 0.9 and len(bound_grid(0.6, 0.9, 0.02)) == 16
    assert bound_grid(1.2, 1.3, 0.25) == [1.2, 1.3]  # a move is min(c + δ, b): b is always reached


# --- the port's search (the defaults), on its own worked example ----------------------------------


def test_the_ports_search_and_loss_by_hand():
    """Four one-token sequences (r, A): (1.8, +2), (0.55, +1), (0.7, −1), (1.6, −2); defaults.

    Surrogate sums at the start (0.6, 1.2): P = 2·1.2 + 0.55 = 2.95, N = 0.7 + 3.2 = 3.9 (share
    0.43 < 0.5). Lower bound first: c_low → 0.65, 0.7, 0.75, 0.8 only raises N (to 4.0); then c_high
    rises until P = 2·c_high + 0.55 reaches N = 4.0: c_high = 1.75 (share 4.05 / 8.05 = 0.503;
    1.70 gives 3.95 / 7.95 = 0.497). Losses −min(rA, clip(r)A): −3.5, −0.55, 0.8 (clipped at 0.8),
    3.2; the dual clip (at most 3·|A|) binds on none. Token mean −0.05 / 4.
    """
    batch = worked_example()
    bapo = objective_from_config("bapo", {})
    found = bapo.search(batch)
    assert (found.clip_low, found.clip_high) == (0.8, 1.75)
    assert (found.positive, found.negative) == (pytest.approx(4.05), pytest.approx(4.0))
    assert found.initial_share == pytest.approx(2.95 / 6.85)
    loss, _ = bapo.loss_sum(batch)
    assert loss.item() / 4 == pytest.approx(-0.0125)
    # the paper's order reaches the target by c_high alone (c_low stays 0.6: N = 3.9, c_high = 1.7)
    paper = objective_from_config("bapo", {"search_order": "upper_first"}).search(batch)
    assert (paper.clip_low, paper.clip_high) == (0.6, 1.7)


def worked_example(rows: slice = slice(None)) -> PolicyBatch:
    ratios, advantages = t([[1.8], [0.55], [0.7], [1.6]])[rows], t([2.0, 1.0, -1.0, -2.0])[rows]
    old = t([[math.log(0.10)], [math.log(0.40)], [math.log(0.50)], [math.log(0.05)]])[rows]  # no π_old weight
    return PolicyBatch(logprobs=ratios.log() + old, old_logprobs=old, mask=torch.ones_like(ratios),
                       advantages=advantages)


def test_the_dual_clip_caps_a_stale_negative_token():
    # A = −1, r = 4: −min(−4, −clip(4)) = 4, capped at 3 (no gradient); without the cap, 4
    batch = PolicyBatch(logprobs=t([[math.log(4.0)]]), old_logprobs=t([[0.0]]), mask=t([[1.0]]), advantages=t([-1.0]))
    capped, _ = objective_from_config("bapo", {}).loss_sum(batch)
    assert capped.item() == pytest.approx(3.0)
    plain, _ = objective_from_config("bapo", {"dual_clip": None}).loss_sum(batch)
    assert plain.item() == pytest.approx(4.0)


def _search_on_rank(rank: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    # rank 0 holds the two positive tokens of the worked example, rank 1 the two negative ones
    found = objective_from_config("bapo", {}).search(worked_example(slice(0, 2) if rank == 0 else slice(2, 4)))
    with open(f"{out_file}.{rank}", "w") as f:
        f.write(f"{found.clip_low} {found.clip_high}")
    dist.destroy_process_group()


def test_p_and_n_are_summed_over_ranks_so_every_rank_picks_the_same_bounds(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_search_on_rank, args=(str(tmp_path / "init"), str(tmp_path / "bounds")), nprocs=2)
    chosen = [(tmp_path / f"bounds.{rank}").read_text() for rank in range(2)]
    # both ranks see the whole example's sums: the bounds of the single-process search
    assert chosen == ["0.8 1.75", "0.8 1.75"]
    alone = objective_from_config("bapo", {}).search(worked_example(slice(0, 2)))
    assert (alone.clip_low, alone.clip_high) == (0.6, 1.2)  # on its own, rank 0 has no negatives: no move


# --- the loss under the chosen bounds -------------------------------------------------------------


def test_loss_and_gradient_by_hand():
    # target 0.55 → (c_low, c_high) = (0.7, 1.6). ℓ = −min(rA, clip(r)A):
    # seq 0: −1, −1.5 | seq 1: 1, 0.75 | seq 2: max(0.65, 0.7) = 0.7 (clipped) | padding: nothing
    batch = chosen_ratios()
    batch.logprobs.requires_grad_(True)
    params = {**SMALL_GRID, **PAPER, "positive_share_target": 0.55, "weight_by_rollout_prob": False}
    expected = {"grpo": -1.25 + 0.875 + 0.7, "dapo": -0.05, "dr_grpo": -0.05}
    for loss_type, value in expected.items():
        loss, metrics = objective_from_config("bapo", {**params, "loss_type": loss_type}).loss_sum(batch)
        assert loss.item() == pytest.approx(value, abs=1e-12)
    assert metrics["clip_fraction_low"] == pytest.approx(1 / 5) and metrics["clip_fraction_high"] == 0.0
    loss.backward()
    # ∂ℓ/∂logp = −A·r on unclipped tokens; 0 on the clipped r = 0.65 negative token and on padding
    assert torch.allclose(batch.logprobs.grad, t([[-1.0, -1.5], [1.0, 0.75], [0.0, 0.0]]), atol=1e-12)


def test_stale_ratio_is_clipped_at_the_reached_upper_bound():
    # a replayed token with r = e^2 ≈ 7.39 and A = +1: even c_high = b+ = 3.0 clips it, ℓ = −3, no gradient
    batch = PolicyBatch(logprobs=t([[-1.0, -3.0]]).requires_grad_(True), old_logprobs=t([[-3.0, -3.0]]),
                        mask=t([[1.0, 1.0]]), advantages=t([1.0]))
    objective = objective_from_config("bapo", {"loss_type": "dapo"})
    loss, _ = objective.loss_sum(batch)
    assert objective.log_metrics()["bapo_clip_high"] == 1.2  # no negative tokens: ρ = 1, nothing moves
    assert loss.item() == pytest.approx(-1.2 - 1.0, abs=1e-12)


def test_on_policy_is_plain_policy_gradient():
    # ratio exactly 1: ℓ = −A whatever the bounds, ∂L/∂logp = −A/tokens (dapo)
    logprobs = t([[-0.5, -1.0], [-2.0, -0.1]]).requires_grad_(True)
    batch = PolicyBatch(logprobs=logprobs, old_logprobs=logprobs.detach(), mask=t([[1, 1], [1, 0]]),
                        advantages=t([0.5, -1.5]))
    objective = objective_from_config("bapo", {})
    loss, _ = objective.loss_sum(batch)
    (loss / objective.normalizer(StepStats(2, 3, 2))).backward()
    assert torch.allclose(logprobs.grad, t([[-0.5 / 3, -0.5 / 3], [1.5 / 3, 0.0]]), atol=1e-12)


# --- an independent NumPy version -----------------------------------------------------------------


def numpy_bapo(logp, old, mask, adv, target, mode, weighted, a_lo, b_lo, d_lo, a_hi, b_hi, d_hi):
    """Algorithm 1 as a literal loop over masked tokens, then the token-mean (dapo) loss."""
    r = np.exp(logp - old)[mask > 0]
    a = np.repeat(adv[:, None], logp.shape[1], axis=1)[mask > 0]
    w = np.exp(old)[mask > 0] if weighted else np.ones_like(r)

    def rho(lo, hi):
        if mode == "gradient":
            g = w * np.abs(a) * r * (((a > 0) & (r < hi)) | ((a < 0) & (r > lo)))
        else:
            g = w * np.abs(np.minimum(r * a, np.clip(r, lo, hi) * a))
        p, total = g[a > 0].sum(), g[a != 0].sum()
        return p / total if total > 0 else 1.0

    lo, hi = a_lo, a_hi
    while rho(lo, hi) < target:
        if hi + d_hi <= b_hi + 1e-9:
            hi += d_hi
        elif lo + d_lo <= b_lo + 1e-9:
            lo += d_lo
        else:
            break
    loss = -np.minimum(r * a, np.clip(r, lo, hi) * a).sum() / len(r)
    return lo, hi, rho(lo, hi), loss


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["gradient", "surrogate"])
def test_matches_independent_numpy(seed, mode):
    rng = np.random.default_rng(seed)
    rows, length = 12, 7
    old = np.log(rng.uniform(0.05, 1.0, (rows, length)))
    logp = old + rng.normal(0.0, 0.6, (rows, length))  # stale samples: ratios well away from 1
    mask = (np.arange(length)[None, :] < rng.integers(1, length + 1, rows)[:, None]).astype(float)
    adv = rng.normal(0.0, 1.0, rows) - 0.3  # more negative than positive, as the paper observes
    target, weighted = rng.uniform(0.3, 0.6), bool(seed % 2)
    grid = dict(clip_low_start=0.6, clip_low_max=0.9, clip_low_step=0.02,
                clip_high_start=1.2, clip_high_max=3.0, clip_high_step=0.05)
    lo, hi, share, loss = numpy_bapo(logp, old, mask, adv, target, mode, weighted, 0.6, 0.9, 0.02, 1.2, 3.0, 0.05)
    objective = objective_from_config("bapo", {**grid, **PAPER, "positive_share_target": target, "contribution": mode,
                                               "weight_by_rollout_prob": weighted, "loss_type": "dapo"})
    batch = PolicyBatch(logprobs=t(logp), old_logprobs=t(old), mask=t(mask), advantages=t(adv))
    found = objective.search(batch)
    assert found.clip_low == pytest.approx(lo, abs=1e-9) and found.clip_high == pytest.approx(hi, abs=1e-9)
    assert found.positive_share == pytest.approx(share, abs=1e-12)
    value, _ = objective.loss_sum(batch)
    assert value.item() / mask.sum() == pytest.approx(loss, abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_bounds_stay_on_their_grids_within_the_ranges(seed):
    generator = torch.Generator().manual_seed(seed)
    ratio = torch.exp(torch.randn(8, 5, generator=generator, dtype=torch.float64) * 1.5)
    advantages = torch.randn(8, generator=generator, dtype=torch.float64)
    config = BAPOConfig(**PAPER, positive_share_target=float(torch.rand(1, generator=generator)), clip_low_start=0.5,
                        clip_low_max=0.85, clip_low_step=0.03, clip_high_start=1.1, clip_high_max=2.0,
                        clip_high_step=0.07)
    found = search_clip_bounds(ratio, advantages, torch.ones(8, 5), config)
    assert 0.5 <= found.clip_low <= 0.85 and 1.1 <= found.clip_high <= 2.0
    assert found.clip_low in bound_grid(0.5, 0.85, 0.03) and found.clip_high in bound_grid(1.1, 2.0, 0.07)
    assert found.clip_low == 0.5 or found.clip_high == bound_grid(1.1, 2.0, 0.07)[-1]  # upper bound first


# --- per-micro-batch adaptation, step metrics and state -------------------------------------------


def test_each_micro_batch_is_searched_on_its_own_tokens():
    params = {**SMALL_GRID, **PAPER, "positive_share_target": 0.55, "weight_by_rollout_prob": False}
    fresh = objective_from_config("bapo", params).loss_sum(chosen_ratios())[0].item()
    used = objective_from_config("bapo", params)
    other = chosen_ratios()
    other.advantages = t([1.0, 1.0, -1.0])
    used.loss_sum(other)
    assert used.loss_sum(chosen_ratios())[0].item() == fresh  # no bound carries over between batches


def test_log_metrics_are_step_means_and_the_achieved_share():
    objective = objective_from_config("bapo", {**SMALL_GRID, **PAPER, "positive_share_target": 0.55,
                                               "weight_by_rollout_prob": False})
    assert objective.log_metrics()["bapo_clip_high"] == 1.2  # before any search: the start bounds
    objective.loss_sum(chosen_ratios())  # → (0.7, 1.6), P = 2.5, N = 1.75; initially P = 1, N = 2.4
    easy = chosen_ratios()
    easy.advantages = t([1.0, 1.0, -1.0])  # P = 1 + 1 + 0.75 = 2.75, N = 0.65: ρ = 0.81, met at (0.6, 1.2)
    objective.loss_sum(easy)
    inert = chosen_ratios()
    inert.advantages = t([0.0, 0.0, 0.0])  # the learner's stand-in micro-batch: not counted
    objective.loss_sum(inert)
    metrics = objective.log_metrics()
    assert metrics["bapo_clip_low"] == pytest.approx((0.7 + 0.6) / 2)
    assert metrics["bapo_clip_high"] == pytest.approx((1.6 + 1.2) / 2)
    assert metrics["bapo_positive_share"] == pytest.approx((2.5 + 2.75) / (2.5 + 1.75 + 2.75 + 0.65))
    assert metrics["bapo_positive_share_initial"] == pytest.approx((1 + 2.75) / (3.4 + 3.4))
    assert metrics["bapo_target_met"] == 1.0
    assert objective.log_metrics() == metrics  # a step without searches repeats the last values


def test_state_round_trip():
    objective = objective_from_config("bapo", {**SMALL_GRID, **PAPER, "positive_share_target": 0.55,
                                               "weight_by_rollout_prob": False})
    objective.loss_sum(chosen_ratios())
    logged = objective.log_metrics()
    assert (logged["bapo_clip_low"], logged["bapo_clip_high"]) == (0.7, 1.6)
    restored = objective_from_config("bapo", {})
    restored.load_state_dict(objective.state_dict())
    assert restored.log_metrics() == logged and restored.state_dict() == logged
    assert all(isinstance(v, float) for v in objective.state_dict().values())


# --- registration and configuration ---------------------------------------------------------------


def test_registered_and_built_from_config():
    assert plugins.objectives.get("bapo") is BAPO
    objective = objective_from_config("bapo", {"positive_share_target": 0.5, "clip_high_max": 2,
                                               "contribution": "surrogate"})
    assert objective.config == BAPOConfig(positive_share_target=0.5, clip_high_max=2.0, contribution="surrogate")
    assert isinstance(objective.config.clip_high_max, float)
    assert not objective.needs_reference() and objective.zero_advantage_is_inert()


def test_defaults_are_the_ports():
    config = BAPOConfig()
    assert (config.positive_share_target, config.clip_low_start, config.clip_low_max, config.clip_high_start,
            config.clip_high_max, config.clip_high_step, config.clip_low_step) == (0.5, 0.6, 0.8, 1.2, 2.0, 0.05, 0.05)
    assert (config.contribution, config.weight_by_rollout_prob, config.search_order, config.reduce_over_ranks,
            config.dual_clip, config.loss_type) == ("surrogate", False, "lower_first", True, 3.0, "dapo")
    fields = {name: text for name, _, _, text in objective_config_fields("bapo")}
    assert all(fields.values()) and "positive_share_target" in fields


@pytest.mark.parametrize("params, message", [
    ({"positive_share_target": 1.5}, "positive_share_target must be in"),
    ({"clip_low_step": 0.0}, "clip_low_step must be > 0"),
    ({"clip_high_step": -0.1}, "clip_high_step must be > 0"),
    ({"clip_low_start": 0.95}, "clip_low_start <= clip_low_max"),
    ({"clip_low_max": 1.0}, "clip_low_max < 1"),
    ({"clip_high_start": 1.0}, "1 < clip_high_start"),
    ({"clip_high_max": 1.1}, "clip_high_start <= clip_high_max"),
    ({"contribution": "value"}, "'value' is not one of: gradient, surrogate"),
    ({"loss_type": "bnpo"}, "'bnpo' is not one of: grpo, dapo, dr_grpo"),
    ({"search_order": "both"}, "'both' is not one of: lower_first, upper_first"),
    ({"dual_clip": 0.5}, "dual_clip must be > 1"),
])
def test_out_of_range_values_name_the_field(params, message):
    with pytest.raises(ValueError, match=message):
        objective_from_config("bapo", params)


def test_unknown_key_and_wrong_type():
    with pytest.raises(ValueError, match=r"'clip_hi_max'.*did you mean 'clip_high_max'"):
        objective_from_config("bapo", {"clip_hi_max": 2.0})
    with pytest.raises(TypeError, match=r"positive_share_target: expected float"):
        objective_from_config("bapo", {"positive_share_target": "half"})
    with pytest.raises(TypeError, match=r"weight_by_rollout_prob: expected bool"):
        objective_from_config("bapo", {"weight_by_rollout_prob": 1})
