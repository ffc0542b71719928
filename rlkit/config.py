"""The typed configuration tree: defaults, YAML recipes, ``--section.key value`` overrides.

Precedence, lowest first: dataclass defaults, a recipe (``--recipe NAME``), the YAML file,
command-line overrides. Every value is checked against its field's type while it is merged, so an
unknown key or a bad value is refused before anything starts, with the closest valid key named.
Names follow TRL's ``GRPOConfig`` where TRL has the same knob.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlkit.typecheck import BadValue, check_value, float_from_text  # noqa: F401 (float_from_text: public here too)

RECIPES_DIR = Path(__file__).parent / "recipes"


class ConfigError(ValueError):
    """A configuration problem found before anything started."""


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


GRADIENT_CHECKPOINTING_FROM_PARAMS = 1_000_000_000  # learner.gradient_checkpointing: auto
# keys that no longer exist, and what replaced them
RENAMED = {
    "learner.micro_batch_groups": "set learner.micro_batch_tokens (a padded-token budget) or "
                                  "learner.micro_batch_size (in sequences); generation no longer follows it "
                                  "(rollout.generation_batch_size)",
}


@dataclass
class ModelConfig:
    name_or_path: str = _help(
        "bundled model name (`tiny-arith`), a local folder, or a Hugging Face hub id", default="tiny-arith")
    dtype: str = _help("parameter dtype: float32, bfloat16 or float16", default="float32")
    trust_remote_code: bool = _help("allow custom model code from the hub", default=False)
    lora_r: int = _help("LoRA rank; 0 trains all weights", default=0)
    lora_alpha: int = _help("LoRA scaling alpha", default=16)
    lora_dropout: float = _help("LoRA dropout", default=0.0)
    lora_target_modules: list[str] = _help(
        "modules LoRA adapts", default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    chat_template: str | None = _help(
        "Jinja chat template (the template itself, or a file holding it) that renders conversational prompts; "
        "replaces the tokenizer's own, and is saved with the final model", default=None)


@dataclass
class EnvConfig:
    name: str = _help("environment plugin: a registered name, file.py:Class or module:Class", default="arith")
    args: dict[str, Any] = _help("keyword arguments for the environment's constructor", default_factory=dict)


@dataclass
class DataConfig:
    train_file: str | None = _help(
        "training prompts instead of the environment's: .jsonl/.json/.parquet/.csv file, a folder "
        "saved with datasets' save_to_disk, or a hub dataset id", default=None)
    eval_file: str | None = _help("held-out prompts for pass-rate evaluation (same forms)", default=None)
    train_split: str = _help("split to read from a hub dataset for training", default="train")
    eval_split: str = _help("split to read from a hub dataset for evaluation", default="test")
    prompt_column: str = _help(
        "column holding the prompt: text, or a list of {role, content} messages rendered with the chat "
        "template (TRL's conversational format)", default="prompt")
    system_prompt: str | None = _help(
        "a system message put first in every conversational prompt that has none of its own", default=None)
    max_prompt_length: int = _help("tokens a prompt may have (0 = no limit); see on_long_prompt", default=0)
    on_long_prompt: str = _help(
        "a prompt over max_prompt_length: `error` refuses the dataset (naming the row), `truncate` keeps its "
        "last max_prompt_length tokens (as TRL does)", default="error")
    shuffle: bool = _help("shuffle training prompts each epoch", default=True)
    on_bad_row: str = _help("a malformed row: `error` refuses the dataset, `skip` drops the row", default="error")
    eval_limit: int = _help("evaluate on at most this many held-out rows (0 = all)", default=0)
    label_free: bool = _help(
        "test-time RL (TTRL/ETTRL): training rows keep only the prompt column, so no answer reaches the "
        "rollout workers, rewards or learners; use a label-free reward (majority_vote). Evaluation "
        "still scores held-out rows against their answers (rewards.eval_funcs)", default=False)


@dataclass
class RewardsConfig:
    funcs: list[str] = _help(
        "reward plugins (names, file.py:fn or module:fn); empty = the environment's defaults",
        default_factory=list)
    weights: list[float] | None = _help("one weight per reward function (default all 1)", default=None)
    eval_funcs: list[str] = _help(
        "reward plugins of evaluation (pass rate, pass@k); empty = rewards.funcs, or the environment's "
        "defaults when data.label_free", default_factory=list)
    pass_threshold: float = _help("a greedy completion passes evaluation when its total reward is at least this",
                                  default=1.0)
    args: dict[str, dict[str, Any]] = _help(
        "constructor arguments of class-based reward plugins, by name (e.g. {format: {pattern: ...}})",
        default_factory=dict)
    timeout_s: float = _help(
        "seconds one reward call (one function on a chunk of completions) may take before it counts as a "
        "failure; 0 = no limit", default=30.0)
    num_workers: int = _help(
        "reward actors per rollout worker (a hung reward is killed with its actor); 0 calls rewards in the "
        "rollout worker itself, where a hung call is abandoned on a thread", default=1)


@dataclass
class RolloutConfig:
    schedule: str = _help(
        "sync (generate all, then train) or periodic_async (train on groups while later ones generate; "
        "weights synced each step, so still on-policy)", default="periodic_async")
    max_staleness: int = _help(
        "0 = on-policy; s > 0 lets generation run up to s policy versions ahead (bounded off-policy)",
        default=0)
    num_workers: int = _help("rollout actors generating in parallel", default=1)
    num_generations: int = _help("completions sampled per prompt (the group size G)", default=8)
    prompts_per_step: int = _help("prompts per optimizer step; a step trains on prompts_per_step x G samples",
                                  default=32)
    max_completion_length: int = _help("tokens generated at most per completion", default=8)
    stop: list[str] = _help(
        "strings that end a completion (as the end token does); the completion's text stops before the "
        "string, its tokens include the ones that wrote it", default_factory=list)
    temperature: float = _help("sampling temperature", default=1.0)
    top_p: float = _help("nucleus sampling; 1.0 disables it", default=1.0)
    top_k: int = _help("top-k sampling; 0 disables it", default=0)
    engine: str = _help(
        "generation engine plugin: hf (transformers, one continuously batched decode loop), a registered "
        "name, file.py:Class or module:Class (docs/engines.md)", default="hf")
    generation_batch_size: int = _help(
        "sequences a rollout worker's engine decodes together; sequences that end make room for waiting "
        "prompts", default=256)
    max_batch_tokens: int = _help(
        "cap on the engine batch's KV cache in tokens, rows x (longest prompt + max_completion_length); "
        "0 = only generation_batch_size limits it", default=0)
    dynamic_sampling: str = _help(
        "drop groups whose completions all scored the same and sample more prompts until the step is "
        "full (DAPO): true, false, or auto (as the objective prefers: on for dapo)", default="auto")
    replay_fraction: float = _help(
        "share of each step's groups replayed from earlier steps instead of generated (off-policy: the "
        "ratio is taken against the log-probs recorded when they were sampled); 0 disables replay",
        default=0.0)
    replay_buffer_steps: int = _help("replayed groups come from the last this many steps", default=4)
    sampler: str = _help(
        "how a prompt's group is sampled: flat (num_generations independent completions) or entropy_tree "
        "(ETTRL's ETMR: M roots, each forked at its fork_points highest-entropy tokens into fork_branches "
        "continuations that reuse the prefix; num_generations = M x (1 + fork_points x fork_branches))",
        default="flat")
    fork_points: int = _help("entropy_tree: forks per root (N), at its highest-entropy positions", default=2)
    fork_branches: int = _help("entropy_tree: continuations sampled from each fork (B)", default=2)
    fork_entropy: str = _help(
        "entropy_tree: what ranks fork positions: shannon (the entropy of the sampling distribution) or "
        "surprisal (-log p of the sampled token, as TreeRL)", default="shannon")
    collaborators: list[dict[str, Any]] = _help(
        "F-TIS collaborators: rollout workers serving other models (same tokenizer) that share whole groups "
        "each step, e.g. [{name: deep, model: tiny-arith-2l, prompts_per_step: 16}] (keys: name, model, "
        "prompts_per_step, num_workers, temperature, learn: a swarm peer with its own learner); train with "
        "objective ftis to weigh them", default_factory=list)
    max_sampling_rounds: int = _help(
        "extra generation rounds a step may take to fill itself under dynamic sampling; a step still "
        "short after them is topped up with zero-variance groups (they carry no gradient)", default=3)


@dataclass
class LearnerConfig:
    learning_rate: float = _help(
        "AdamW learning rate; 3e-4 suits the bundled tiny model, real LLMs want about 1e-6", default=3e-4)
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    adam_beta1: float = _help("AdamW beta1", default=0.9)
    adam_beta2: float = _help("AdamW beta2", default=0.99)
    adam_epsilon: float = _help("AdamW epsilon", default=1e-8)
    max_grad_norm: float = _help("clip the gradient's global norm; 0 disables", default=1.0)
    lr_scheduler: str = _help("constant, linear or cosine decay to 0 over max_steps", default="cosine")
    warmup_steps: int = _help("linear warm-up steps", default=0)
    micro_batch_tokens: int = _help(
        "learner micro-batch budget in padded tokens, sequences x (longest prompt + longest completion); "
        "whole groups are packed until the next would pass it (a larger group goes alone); sets memory, "
        "not the algorithm; 0 = no token cap", default=8192)
    micro_batch_size: int = _help(
        "cap on the sequences of one learner micro-batch (whole groups: a multiple of "
        "rollout.num_generations); 0 = only micro_batch_tokens limits it", default=0)
    num_learners: int = _help("data-parallel learner actors", default=1)
    zero_stage: int = _help("DeepSpeed ZeRO stage 0-3", default=0)
    backend: str = _help("torch.distributed backend: auto (nccl on GPU, gloo on CPU), gloo or nccl",
                         default="auto")
    gradient_checkpointing: str = _help(
        "recompute activations in the backward pass to save memory: true, false, or auto (on for models "
        f"of {GRADIENT_CHECKPOINTING_FROM_PARAMS // 10**9}B parameters or more)", default="auto")


@dataclass
class ObjectiveConfig:
    name: str = _help("objective plugin (see `rlkit list objectives`)", default="grpo")
    params: dict[str, Any] = _help("the objective's own fields, written beside `name` in YAML",
                                   default_factory=dict)


@dataclass
class PreferenceConfig:
    """Offline preference training (``trainer: preference``): rlkit/preference/."""

    loss: str = _help("preference loss plugin: dpo or power (POWER-DL; see `rlkit list preference_losses`)",
                      default="dpo")
    params: dict[str, Any] = _help("the loss's own fields (beta, sft_weight, label_rate...), written beside "
                                   "`loss` in YAML", default_factory=dict)
    pairs_per_step: int = _help("preference pairs per optimizer step", default=32)
    epochs: float = _help("when > 0, train this many passes over the pairs (sets max_steps; a max_steps override wins)", default=0.0)
    max_length: int = _help(
        "tokens a pair may take, prompt + longer response + end token; longer pairs are refused by row "
        "number; 0 = the model's context (max_position_embeddings)", default=0)
    eval_generation: bool = _help(
        "also measure the greedy pass rate on the environment's held-out prompts with its rewards, before "
        "and after training and every eval_steps (one rollout worker is started for it)", default=False)


@dataclass
class LoggingConfig:
    tensorboard: bool = _help("write TensorBoard event files under RUN/tb", default=True)
    progress: bool = _help("show a live progress bar", default=True)
    plot: bool = _help("write RUN/reward_curve.png at the end", default=True)


@dataclass
class SandboxConfig:
    require: str = _help(
        "kernel: model-written code runs only inside the kernel boundary (bubblewrap mount namespace + seccomp; "
        "refused where missing); any: where the boundary is missing, fall back to namespaces, rlimits and the "
        "audit hook (not a security boundary)", default="kernel" if sys.platform.startswith("linux") else "any")
    url: str | None = _help(
        "a sandbox service that runs the code instead of this machine (rlkit sandbox-serve, or a SandboxFusion "
        "server: POST {url}/run_code)", default=None)


@dataclass
class ClusterConfig:
    address: str | None = _help(
        "Ray cluster address (e.g. ray://head:10001 or auto); none starts Ray in-process", default=None)
    num_cpus: int | None = _help("CPUs for the in-process Ray cluster (default: all)", default=None)
    use_gpu: str = _help("auto, true or false: place learners and rollout workers on GPUs", default="auto")
    placement: str = _help(
        "where actors go: default (Ray's scheduler), pack (one placement group on as few nodes as fit: learner "
        "rank 0 beside the rollout workers) or spread (over as many nodes as there are)", default="default")
    learner_cpus: float = _help("CPUs each learner rank reserves", default=1.0)
    worker_cpus: float = _help("CPUs each rollout worker reserves", default=1.0)
    learner_gpus: float | None = _help(
        "GPUs each learner rank reserves; none = as use_gpu splits the cluster's GPUs", default=None)
    worker_gpus: float | None = _help(
        "GPUs each rollout worker reserves; none = as use_gpu splits the cluster's GPUs", default=None)
    reward_cpus: float = _help(
        "CPUs each reward actor reserves (rewards.num_workers per rollout worker); 0 = they share the cores of "
        "their rollout worker's node and never hold a slot another actor waits for", default=0.0)
    reward_gpus: float = _help(
        "GPUs each reward actor reserves, e.g. for a reward model (its plugin then loads onto cuda)", default=0.0)
    learner_threads: int = _help(
        "torch threads of each learner actor; 0 = the machine's cores shared among the learners (the "
        "learner is the busier side of a CPU run, and generation and training mostly take turns)", default=0)
    worker_threads: int = _help("torch threads of each rollout worker actor", default=1)
    start_timeout_s: float = _help(
        "seconds the actors may take to start (model load, process group, op builds) before the run "
        "stops and names what it waited for", default=1800.0)
    op_lock_timeout_s: float = _help(
        "seconds a learner waits on another process's build lock of a compiled op before it stops "
        "and names the lock file (a build killed midway leaves one behind)", default=300.0)
    actor_restart_timeout_s: float = _help(
        "seconds to wait for a restarting rollout worker to answer again before the run stops", default=600.0)
    max_call_retries: int = _help(
        "times one rollout call (a chunk of prompts, a weight load, an evaluation) is sent again after "
        "its worker died, before the run stops", default=3)
    weight_sync: str = _help(
        "how new weights reach the rollout workers: object_store (a CPU copy through Ray), broadcast (a "
        "process group of learner rank 0 and the workers: NCCL GPU to GPU, gloo on CPU), or auto "
        "(broadcast when learners and workers have GPUs of their own and the run is on-policy)",
        default="auto")
    weight_sync_timeout_s: float = _help(
        "seconds a weight broadcast (or forming its group) may take before it counts as failed and the "
        "object store takes over for that sync", default=600.0)


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "env": EnvConfig, "data": DataConfig, "rewards": RewardsConfig,
    "rollout": RolloutConfig, "learner": LearnerConfig, "objective": ObjectiveConfig,
    "logging": LoggingConfig, "cluster": ClusterConfig, "preference": PreferenceConfig, "sandbox": SandboxConfig,
}

_TOP_LEVEL_HELP = {
    "trainer": "rl (rollouts and rewards: RLTrainer) or preference (offline pairs: PreferenceTrainer; its "
               "keys are under preference, and rollout, rewards and objective are not used)",
    "output_dir": "run folder (default runs/<env>-<objective>-<time>)",
    "seed": "seed for data order, sampling and initialization",
    "max_steps": "optimizer steps to train",
    "save_steps": "write a checkpoint every N steps (0 = none; the final model is always exported)",
    "save_total_limit": "checkpoints kept on disk",
    "eval_steps": "evaluate the held-out pass rate every N steps (0 = before and after only)",
}


@dataclass(init=False)
class RLConfig:
    """The whole configuration of a run.

    Build it with sections (``RLConfig(rollout=RolloutConfig(num_generations=4))``), or TRL-style
    with flat field names routed to their section (``RLConfig(learning_rate=1e-3,
    num_generations=4, beta=0.04)``; unknown flat names go to the objective).
    """

    trainer: str = _help(_TOP_LEVEL_HELP["trainer"], default="rl")
    output_dir: str | None = _help(_TOP_LEVEL_HELP["output_dir"], default=None)
    seed: int = _help(_TOP_LEVEL_HELP["seed"], default=0)
    max_steps: int = _help(_TOP_LEVEL_HELP["max_steps"], default=300)
    save_steps: int = _help(_TOP_LEVEL_HELP["save_steps"], default=50)
    save_total_limit: int = _help(_TOP_LEVEL_HELP["save_total_limit"], default=2)
    eval_steps: int = _help(_TOP_LEVEL_HELP["eval_steps"], default=0)
    model: ModelConfig = _help("model and tokenizer", default_factory=ModelConfig)
    env: EnvConfig = _help("environment", default_factory=EnvConfig)
    data: DataConfig = _help("datasets", default_factory=DataConfig)
    rewards: RewardsConfig = _help("reward functions", default_factory=RewardsConfig)
    rollout: RolloutConfig = _help("generation and schedule", default_factory=RolloutConfig)
    learner: LearnerConfig = _help("optimizer and DeepSpeed", default_factory=LearnerConfig)
    objective: ObjectiveConfig = _help("loss", default_factory=ObjectiveConfig)
    logging: LoggingConfig = _help("what is logged and shown", default_factory=LoggingConfig)
    preference: PreferenceConfig = _help("offline preference training (trainer: preference)",
                                         default_factory=PreferenceConfig)
    cluster: ClusterConfig = _help("Ray", default_factory=ClusterConfig)
    sandbox: SandboxConfig = _help("where and how model-written code runs", default_factory=SandboxConfig)

    def __init__(self, **kwargs: Any):
        for f in dataclasses.fields(RLConfig):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            setattr(self, f.name, default)
        apply_mapping(self, _route_flat_kwargs(kwargs))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, with the objective's params written beside its name (YAML form)."""
        out = dataclasses.asdict(self)
        objective = out.pop("objective")
        out["objective"] = {"name": objective["name"], **objective["params"]}
        preference = out.pop("preference")
        out["preference"] = {**{k: v for k, v in preference.items() if k != "params"}, **preference["params"]}
        return out


# --- merging -------------------------------------------------------------------------------------

def _route_flat_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Map TRL-style flat names (``num_generations``) onto their section (``rollout``)."""
    top = {f.name for f in dataclasses.fields(RLConfig)}
    routed: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in top:
            routed[key] = value
            continue
        owners = [name for name, cls in SECTIONS.items()
                  if name not in ("objective", "preference") and key in {f.name for f in dataclasses.fields(cls)}]
        if len(owners) > 1:
            raise ConfigError(f"{key!r} is ambiguous between sections {owners}; write it as section.{key}")
        section = owners[0] if owners else "objective"  # objective fields are validated later
        routed.setdefault(section, {})
        if isinstance(routed[section], dict):
            routed[section][key] = value
    return routed


def apply_mapping(config: RLConfig, mapping: dict[str, Any], source: str = "") -> None:
    """Merge a nested mapping into ``config``, checking every key and value."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source or 'config'}: expected a mapping of sections, got {type(mapping).__name__}")
    for key, value in mapping.items():
        _set_path(config, [str(key)], value, source)


def apply_overrides(config: RLConfig, overrides: dict[str, str]) -> None:
    """Apply ``{"rollout.temperature": "0.7"}``; string values are parsed as YAML scalars."""
    for dotted, raw in overrides.items():
        _set_path(config, dotted.split("."), _parse_cli_value(raw), "command line")


def _set_path(target: Any, path: list[str], value: Any, source: str) -> None:
    where = f" (from {source})" if source else ""
    if isinstance(target, ObjectiveConfig) and path[0] not in ("name", "params"):
        target.params[".".join(path)] = value  # checked against the objective's own fields in validate()
        return
    if isinstance(target, ObjectiveConfig) and path == ["name"] and value != target.name:
        target.params = {}  # an earlier layer's fields belong to the objective this one replaces
    if isinstance(target, PreferenceConfig) and path[0] not in {f.name for f in dataclasses.fields(target)}:
        target.params[".".join(path)] = value  # checked against the loss's own fields in validate()
        return
    names = {f.name: f for f in dataclasses.fields(target)}
    key = path[0]
    full = _dotted_name(target, key)
    if key not in names:
        if full in RENAMED:
            raise ConfigError(f"{full}{where} is gone: {RENAMED[full]}")
        raise ConfigError(f"unknown config key {full!r}{where}{_suggest(key, names, target)}")
    f = names[key]
    current = getattr(target, key)
    if dataclasses.is_dataclass(current):
        if len(path) > 1:
            _set_path(current, path[1:], value, source)
        elif isinstance(value, dict):
            # the objective's name first: its fields written before it in the mapping still belong to it
            for sub_key, sub_value in sorted(value.items(), key=lambda item: str(item[0]) != "name"):
                _set_path(current, [str(sub_key)], sub_value, source)
        elif dataclasses.is_dataclass(value) and type(value) is type(current):
            setattr(target, key, value)
        else:
            raise ConfigError(f"{full}{where}: expected a mapping of its keys, got {value!r}")
        return
    if len(path) > 1:
        if _is_dict_type(_field_type(type(target), key)):
            current[".".join(path[1:])] = value
            return
        raise ConfigError(f"{full}{where} is a value, not a section; cannot set {'.'.join(path)}")
    setattr(target, key, _coerce(value, _field_type(type(target), key), full, where))


def _dotted_name(target: Any, key: str) -> str:
    for section, cls in SECTIONS.items():
        if type(target) is cls:
            return f"{section}.{key}"
    return key


def _suggest(key: str, names: dict[str, Any], target: Any) -> str:
    candidates = [_dotted_name(target, n) for n in names]
    if isinstance(target, RLConfig):  # a flat field of some section given at top level
        candidates += [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    plain = {c.rsplit(".", 1)[-1]: c for c in candidates}
    close = difflib.get_close_matches(key, list(plain), n=1, cutoff=0.6)
    exact = [c for c in candidates if c.endswith("." + key)]
    best = exact[0] if exact else (plain[close[0]] if close else None)
    return f"; did you mean {best!r}?" if best else f"; valid keys: {', '.join(sorted(names))}"


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _is_dict_type(tp: Any) -> bool:
    return typing.get_origin(tp) is dict or tp is dict


def _coerce(value: Any, tp: Any, full: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only where it loses nothing."""
    try:
        return check_value(value, tp, f"{full}{where}")
    except BadValue as exc:
        raise ConfigError(str(exc)) from None


def _parse_cli_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def parse_override_args(args: list[str]) -> dict[str, str]:
    """``["--rollout.temperature", "0.7", "--seed=3"]`` -> ``{"rollout.temperature": "0.7", "seed": "3"}``."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(f"unexpected argument {token!r}; overrides look like --section.key value")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            raise ConfigError(f"override {token} needs a value (--{key} VALUE)")
        overrides[key.replace("-", "_")] = value
    return overrides


# --- loading -------------------------------------------------------------------------------------

def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, recipe_names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown recipe {name!r}{hint} (available: {', '.join(recipe_names())})")
    return path


def normalize_objective(data: dict[str, Any]) -> dict[str, Any]:
    """YAML writes an objective's fields beside its name; the tree keeps them under params."""
    objective = data.get("objective")
    if isinstance(objective, str):
        data = {**data, "objective": {"name": objective}}
    return data


def describe_fields() -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, help) for every field: the source of the config reference."""
    rows = []
    defaults = RLConfig()
    for f in dataclasses.fields(RLConfig):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            hints = typing.get_type_hints(type(value))
            for sub in dataclasses.fields(value):
                rows.append((f"{f.name}.{sub.name}", _type_name(hints[sub.name]),
                             getattr(value, sub.name), sub.metadata.get("help", "")))
        else:
            rows.append((f.name, _type_name(typing.get_type_hints(RLConfig)[f.name]), value,
                         f.metadata.get("help", "")))
    return rows


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")
