"""The learner: one data-parallel rank of a DeepSpeed-initialized policy.

It receives micro-batches of :class:`RolloutGroup`s, scores them under the current (and, when
the objective asks, the reference) policy, back-propagates the objective's unnormalized loss, and
at the step boundary divides the accumulated gradient by the step's normalizer and updates.
The driver wraps this class in a Ray actor; nothing here knows about Ray.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from rlkit import metric_names as m
from rlkit.config import RLConfig
from rlkit.data import RolloutGroup, TrainBatch
from rlkit.learner.op_builds import bounded_build_locks, prepare_op_builds
from rlkit.learner.optim import NormalizedAdamW, learning_rate_at
from rlkit.learner.scoring import policy_logprobs
from rlkit.objectives import PolicyBatch, StepStats, objective_from_config


class Learner:
    """Built in two calls so that ranks can meet on rank 0's machine, wherever Ray placed it:
    ``Learner(...)``, then rank 0's :meth:`rendezvous_address`, then :meth:`connect` on every rank."""

    def __init__(self, config: RLConfig, *, rank: int, world_size: int, threads: int = 1):
        if threads < 0:  # the machine's cores, shared among the ranks
            threads = max(1, (os.cpu_count() or 1) // world_size)
        if threads:  # 0 keeps the process's setting
            torch.set_num_threads(threads)
        torch.manual_seed(config.seed)
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.device = _device()

    def rendezvous_address(self, loopback: bool) -> tuple[str, int]:
        """An address of this machine the other ranks can reach, and a free port on it."""
        import socket

        if loopback:
            host = "127.0.0.1"
        else:
            import ray

            host = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((host, 0))
            return host, s.getsockname()[1]

    def connect(self, master_addr: str, master_port: int) -> None:
        """Join the process group, load the model(s) and build the DeepSpeed engine."""
        config = self.config
        prepare_op_builds()  # before DeepSpeed starts: it builds ops as it initializes
        with bounded_build_locks(config.cluster.op_lock_timeout_s):
            self._connect(master_addr, master_port)

    def _connect(self, master_addr: str, master_port: int) -> None:
        import deepspeed

        config = self.config
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK="0",
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        backend = config.learner.backend
        if backend == "auto":
            backend = "nccl" if self.device.type == "cuda" else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)

        from rlkit.models import load_model, load_tokenizer

        self.tokenizer = load_tokenizer(config.model)
        self._build_loss()
        model = load_model(config.model)
        self.checkpointing = checkpointing_wanted(config.learner.gradient_checkpointing, model)
        if self.checkpointing:
            model.gradient_checkpointing_enable()
        self.reference = None
        if self._needs_reference_model():
            self.reference = load_model(config.model, trainable=False).to(self.device).eval()
            self.reference.requires_grad_(False)
        self.engine = self._initialize(deepspeed, model)
        self._reset_step_totals()

    def _build_loss(self) -> None:
        self.objective = objective_from_config(self.config.objective.name, self.config.objective.params)

    def _needs_reference_model(self) -> bool:
        return self.objective.needs_reference()

    def _initialize(self, deepspeed, model):
        cfg = self.config.learner
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = NormalizedAdamW(
            params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
            weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
            partitioned=cfg.zero_stage > 0 and self.world_size > 1)
        ds_config: dict[str, Any] = {
            # micro-batches are cut by a token budget, so a step runs as many as it needs: the step,
            # not a micro-batch count, is the accumulation boundary (the batch sizes are nominal)
            "managed_gradient_accumulation": False,
            "train_micro_batch_size_per_gpu": self.config.rollout.num_generations,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": 0.0,  # done after normalization, in NormalizedAdamW
            "zero_optimization": {"stage": cfg.zero_stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if self.config.model.dtype == "bfloat16":
            ds_config["bf16"] = {"enabled": True}
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        return engine

    # --- one optimizer step = the micro-batches the driver sends, then step() ------------------

    def _reset_step_totals(self) -> None:
        self._sums: dict[str, float] = {}
        self._micro_batches = 0

    def train_micro_batch(self, groups: list[RolloutGroup], extra: list[RolloutGroup] | None = None,
                          version: int | None = None, step_stats: dict[str, int] | None = None,
                          filler: bool = False) -> dict[str, float]:
        """Forward + backward of one micro-batch; gradients accumulate until :meth:`step`.

        ``extra`` holds one-row groups the objective asked for besides the step's groups
        (``Objective.extra_rows``); ``Objective.combine_extra`` joins them to the micro-batch.
        ``version`` is the policy version of the learner's current weights (the step index).
        ``step_stats`` (with the extra rows) are the whole step's totals, for ``PolicyBatch.step_stats``.
        A ``filler`` pass (every rank must join the step's collectives, and under ZeRO-2/3 or a loss
        that reduces over ranks run as many passes as the others) adds an exactly zero gradient,
        contributes nothing to a statistic summed over ranks, and counts in no total.
        """
        started, wall_started = time.perf_counter(), time.time()
        groups, skipped = self._split_inert(groups)
        batch = TrainBatch.from_groups(groups, self.tokenizer.pad_token_id)
        policy = self._policy_batch(batch, version)
        if filler:  # advantages 0 as well: a statistic a loss sums over ranks gets nothing from it
            policy.advantages = torch.zeros_like(policy.advantages)
        trained = batch.num_tokens
        entropy_sum = float((policy.entropy * policy.mask).sum())  # of the policy's own samples only
        if extra:
            extra_batch = TrainBatch.from_groups(extra, self.tokenizer.pad_token_id)
            policy = self.objective.combine_extra(policy, self._extra_policy_batch(extra_batch))
            trained += extra_batch.num_tokens
        if step_stats is not None:
            policy.step_stats = self._step_stats(step_stats)
        loss_sum, metrics = self.objective.loss_sum(policy)
        if filler:
            self.engine.backward(loss_sum * 0.0, scale_wrt_gas=False)
            self._micro_batches += 1
            self._accumulate({m.LEARNER_SECONDS: time.perf_counter() - started})
            return {"tokens": 0, "sequences": 0, "started": wall_started, "ended": time.time()}
        self.engine.backward(loss_sum, scale_wrt_gas=False)
        self._micro_batches += 1
        # skipped groups still count in the step's tokens and entropy: on-policy the rollout's
        # entropies are the learner's own (same weights, same temperature)
        skipped_tokens = sum(g.num_tokens for g in skipped)
        skipped_entropy = sum(sum(r.entropies) for g in skipped for r in g.rollouts)
        self._accumulate({m.LOSS_SUM: loss_sum.item(), m.TOKENS: batch.num_tokens + skipped_tokens,
                          m.TRAINED_TOKENS: trained, m.SKIPPED_GROUPS: len(skipped), m.EXTRA_ROWS: len(extra or ()),
                          m.LEARNER_SECONDS: time.perf_counter() - started,
                          m.ENTROPY_SUM: entropy_sum + skipped_entropy,
                          **{f"{k}{m.WEIGHTED}": v * trained for k, v in metrics.items()}})
        return {"tokens": trained, "sequences": batch.num_sequences, "started": wall_started, "ended": time.time()}

    def _extra_policy_batch(self, batch: TrainBatch) -> PolicyBatch:
        """Extra rows scored like the step's own (logits / rollout temperature), ratio 1 on-policy."""
        batch = _to_device(batch, self.device)
        logprobs, entropy = policy_logprobs(self.engine, batch, self.config.rollout.temperature,
                                            with_entropy=True, share_prompts=not self.checkpointing)
        return PolicyBatch(logprobs=logprobs, old_logprobs=logprobs.detach(), mask=batch.completion_mask.float(),
                           advantages=torch.zeros(batch.num_sequences, device=logprobs.device),
                           behavior_logprobs=batch.behavior_logprobs, entropy=entropy.detach(),
                           stored_logprobs=batch.stored_logprobs)

    @torch.no_grad()
    def score(self, groups: list[RolloutGroup]) -> list[list[list[float]]]:
        """Per-token log-probs of every completion under the current weights (rollout temperature),
        as ``[group][rollout][token]`` (``RunAccess.score``: the driver gives each rank a share)."""
        out = []
        for group in groups:
            batch = _to_device(TrainBatch.from_groups([group], self.tokenizer.pad_token_id), self.device)
            logprobs, _ = policy_logprobs(self.engine, batch, self.config.rollout.temperature, share_prompts=False)
            out.append([logprobs[i, :len(r.completion_ids)].tolist() for i, r in enumerate(group.rollouts)])
        return out

    def _split_inert(self, groups: list[RolloutGroup]) -> tuple[list[RolloutGroup], list[RolloutGroup]]:
        """(groups to train on, groups the objective says add nothing: all advantages zero)."""
        if not self.objective.zero_advantage_is_inert():
            return groups, []
        if all(r.advantage is not None or r.turn_advantages is not None for g in groups for r in g.rollouts):
            # the driver's values, read as they are: no padded batch built for the decision
            keep = [g for g in groups if any(r.advantage or any(r.turn_advantages or ()) for r in g.rollouts)]
        else:  # groups that never went through the driver
            advantages = batch_advantages(self.objective, TrainBatch.from_groups(groups, self.tokenizer.pad_token_id))
            live = advantages.reshape(len(groups), -1).abs().amax(dim=1) > 0
            keep = [g for g, alive in zip(groups, live.tolist()) if alive]
        if not keep:
            # every rank must run one forward and backward per micro-batch (ZeRO's collectives pair
            # up across ranks), so train on one inert group: its gradient is exactly zero
            keep = groups[:1]
        kept = {id(g) for g in keep}
        return keep, [g for g in groups if id(g) not in kept]

    def _policy_batch(self, batch: TrainBatch, version: int | None = None) -> PolicyBatch:
        temperature = self.config.rollout.temperature
        batch = _to_device(batch, self.device)
        # transformers turns the KV cache off under gradient checkpointing; then score the long way
        logprobs, entropy = policy_logprobs(self.engine, batch, temperature, with_entropy=True,
                                            share_prompts=not self.checkpointing)
        ref = None
        if self.reference is not None:
            with torch.no_grad():
                ref, _ = policy_logprobs(self.reference, batch, temperature)
        # Rows the current weights sampled take pi_old = the learner's own log-probs (the ratio is
        # exactly 1, with a live gradient); rows of an older policy (max_staleness, replay) take the
        # log-probs recorded when they were sampled.
        if version is None:
            fresh = torch.full_like(batch.policy_versions, self.config.rollout.max_staleness == 0, dtype=torch.bool)
        else:
            fresh = batch.policy_versions == version
        old = torch.where(fresh.to(logprobs.device).unsqueeze(1), logprobs.detach(), batch.behavior_logprobs)
        advantages = batch_advantages(self.objective, batch)
        extras = batch.advantage_extras
        if batch.advantages is None and getattr(self.objective, "estimator", None) is not None \
                and not self.objective.turn_level:
            # groups that never went through the driver: the estimator's extras, as its advantages
            extras = self.objective.estimate(batch.rewards)[1] or None
        extras = None if extras is None else {k: v.reshape(-1).to(self.device) for k, v in extras.items()}
        return PolicyBatch(logprobs=logprobs, old_logprobs=old, mask=batch.completion_mask.float(),
                           advantages=advantages.to(self.device), ref_logprobs=ref,
                           behavior_logprobs=batch.behavior_logprobs, entropy=entropy.detach(),
                           token_turns=batch.token_turns, advantage_extras=extras, shared=batch.shared)

    def _accumulate(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)

    def step(self, stats: dict[str, int], step_index: int) -> dict[str, float]:
        """Normalize, clip and apply the accumulated gradient (called on every rank)."""
        if not self._micro_batches:
            raise RuntimeError("step() before any micro-batch (or filler pass) of the step")
        normalizer = float(self.objective.normalizer(self._step_stats(stats)))
        lr, grad_norm = self._apply_gradient(normalizer, step_index)
        out = {key: self._sums.get(key, 0.0) for key in (m.LOSS_SUM, m.LEARNER_SECONDS, m.ENTROPY_SUM,
                                                          m.SKIPPED_GROUPS, m.EXTRA_ROWS, m.TRAINED_TOKENS)}
        out.update({m.NORMALIZER: normalizer, m.TOKENS: max(self._sums.get(m.TOKENS, 0.0), 1.0),
                    m.GRAD_NORM: grad_norm, m.LEARNING_RATE: lr,
                    m.WEIGHT_EXPORT_SECONDS: getattr(self, "export_seconds", 0.0)})  # of the weights this step trained
        trained = max(out[m.TRAINED_TOKENS], 1.0)  # the objective's metrics cover these
        out.update({k[:-len(m.WEIGHTED)]: v / trained for k, v in self._sums.items() if k.endswith(m.WEIGHTED)})
        out.update(self.objective.log_metrics())  # adaptive state: clip bounds, temperatures
        self._reset_step_totals()
        return out

    def _apply_gradient(self, normalizer: float, step_index: int) -> tuple[float, float]:
        """Divide the accumulated gradient by ``normalizer``, clip it and update: (learning rate, grad norm)."""
        lr = learning_rate_at(step_index, self.config.learner.learning_rate, self.config.learner.lr_scheduler,
                              self.config.learner.warmup_steps, self.config.max_steps)
        optimizer = _base_optimizer(self.engine)
        optimizer.gradient_multiplier = self.world_size / normalizer  # DeepSpeed averaged over ranks
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.engine.step()
        return lr, optimizer.last_grad_norm

    def _step_stats(self, stats: dict[str, int]) -> StepStats:
        return StepStats(num_sequences=stats["num_sequences"], num_tokens=stats["num_tokens"],
                         max_completion_length=self.config.rollout.max_completion_length,
                         extra_sequences=stats.get("extra_sequences", 0), extra_tokens=stats.get("extra_tokens", 0))

    def peak_memory(self) -> dict[str, float | None]:
        return peak_memory()

    # --- weights and checkpoints ---------------------------------------------------------------

    def export_weights(self) -> dict[str, torch.Tensor] | None:
        """Full CPU weights for rollout engines (rank 0 only; gathered under ZeRO-3)."""
        from rlkit.models import trainable_state_dict

        started = time.perf_counter()
        with _gathered(self.engine, self.config.learner.zero_stage):
            state = trainable_state_dict(self.engine.module) if self.rank == 0 else None
        self.export_seconds = time.perf_counter() - started  # reported with the next step
        return state

    # --- the weight-broadcast group (cluster.weight_sync: broadcast) ----------------------------

    def weight_specs(self) -> list:
        """Names, shapes and dtypes of what :meth:`broadcast_weights` sends (all ranks: ZeRO-3 gathers)."""
        from rlkit.models import generation_weights
        from rlkit.weight_broadcast import tensor_specs

        with _gathered(self.engine, self.config.learner.zero_stage):
            return tensor_specs(generation_weights(self.engine.module)) if self.rank == 0 else []

    def join_weight_group(self, host: str, port: int, world_size: int, timeout_s: float) -> None:
        """Rank 0 hosts the group as its rank 0 (a group formed again replaces the old one)."""
        from rlkit.weight_broadcast import WeightGroup

        self.weight_group = WeightGroup(host, port, 0, world_size, self.device, timeout_s)

    def broadcast_weights(self) -> dict[str, Any]:
        """Send the current weights to the group's workers (rank 0; every rank takes part in the
        ZeRO-3 gather). A failure (a worker gone midway) is reported, not raised: the driver then
        falls back to the object store for this sync and forms the group again."""
        from rlkit.models import generation_weights

        started = time.perf_counter()
        with _gathered(self.engine, self.config.learner.zero_stage):
            if self.rank != 0:
                return {"bytes": 0, "seconds": 0.0, "error": None}
            try:
                sent = self.weight_group.send(generation_weights(self.engine.module))
            except Exception as exc:  # noqa: BLE001 - a broken group is the driver's to handle
                self.weight_group = None
                return {"bytes": 0, "seconds": time.perf_counter() - started, "error": f"{type(exc).__name__}: {exc}"}
        self.export_seconds = time.perf_counter() - started
        return {"bytes": sent, "seconds": self.export_seconds, "error": None}

    def save_checkpoint(self, path: str, client_state: dict[str, Any]) -> None:
        state = {"objective": self._loss_state(), "torch_rng": torch.get_rng_state(), **client_state}
        self.engine.save_checkpoint(path, tag="learner", client_state=state)

    def load_checkpoint(self, path: str) -> dict[str, Any]:
        _, state = self.engine.load_checkpoint(path, tag="learner")
        if state is None:
            raise FileNotFoundError(f"no learner checkpoint in {path}")
        self._load_loss_state(state.pop("objective"))
        torch.set_rng_state(state.pop("torch_rng"))
        return state

    def _loss_state(self) -> dict[str, Any]:
        return self.objective.state_dict()

    def _load_loss_state(self, state: dict[str, Any]) -> None:
        self.objective.load_state_dict(state)

    def save_pretrained(self, path: str) -> None:
        """The trained model in Hugging Face format (safetensors), LoRA merged, with its tokenizer (and
        chat template); with LoRA the adapter alone goes to ``path/adapter`` as well (peft's format)."""
        weights = self.export_weights()
        with _gathered(self.engine, self.config.learner.zero_stage):
            if self.rank == 0 and hasattr(self.engine.module, "peft_config"):
                self.engine.module.save_pretrained(str(Path(path) / "adapter"), safe_serialization=True)
        if self.rank != 0:
            return
        from rlkit.models import load_model

        model = load_model(self.config.model, trainable=False)
        model.load_state_dict(weights)
        Path(path).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)


def peak_memory() -> dict[str, float | None]:
    """This process's peak resident memory and, on a GPU, torch's peak allocation, in MB."""
    import resource

    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cuda": cuda}


def checkpointing_wanted(setting: str, model) -> bool:
    """``learner.gradient_checkpointing``: true, false, or auto (on from a size up, where activations,
    not weights, decide whether a micro-batch fits)."""
    from rlkit.config import GRADIENT_CHECKPOINTING_FROM_PARAMS

    if setting == "auto":
        return sum(p.numel() for p in model.parameters()) >= GRADIENT_CHECKPOINTING_FROM_PARAMS
    return setting == "true"


def batch_advantages(objective, batch: TrainBatch) -> torch.Tensor:
    """``[B]`` per sequence, or ``[B, C]`` per token for turn-level objectives (each token takes
    the advantage of its turn; environment tokens get 0).

    In a run these are the driver's (``Objective.assign_advantages``, once per step), carried by
    the groups; groups that never went through the driver (a learner driven by hand) are
    estimated here, from the micro-batch's own groups.
    """
    if batch.advantages is not None:
        return batch.advantages
    if not objective.turn_level:
        return objective.compute_advantages(batch.rewards).reshape(-1)
    if batch.turn_rewards is None:  # single-turn groups are one-turn episodes
        one_turn = batch.rewards.unsqueeze(-1)
        return objective.compute_turn_advantages(one_turn, torch.ones_like(one_turn, dtype=torch.bool)).reshape(-1)
    per_turn = objective.compute_turn_advantages(batch.turn_rewards, batch.turn_reached)
    per_turn = per_turn.reshape(batch.num_sequences, -1).to(batch.token_turns.device)
    return per_turn.gather(1, batch.token_turns) * batch.completion_mask


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _to_device(batch: TrainBatch, device: torch.device) -> TrainBatch:
    if device.type == "cpu":
        return batch
    fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(batch).items()}
    return TrainBatch(**fields)


def _base_optimizer(engine) -> NormalizedAdamW:
    optimizer = engine.optimizer
    while not isinstance(optimizer, NormalizedAdamW):  # ZeRO wraps the client optimizer
        optimizer = optimizer.optimizer
    return optimizer


class _gathered:
    """Context that materializes ZeRO-3 partitioned parameters (a no-op below stage 3)."""

    def __init__(self, engine, stage: int):
        self._ctx = None
        if stage == 3:
            import deepspeed

            self._ctx = deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
