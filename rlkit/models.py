"""Loading models and tokenizers through transformers, with optional LoRA through peft."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from rlkit.config import ModelConfig

ASSETS_DIR = Path(__file__).parent / "assets"
BUNDLED_MODELS = {"tiny-arith": ASSETS_DIR / "tiny-arith", "tiny-arith-2l": ASSETS_DIR / "tiny-arith-2l"}

def _cache_kwarg() -> str:
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


# transformers 5.2x renamed ``past_key_values`` to ``cache`` (the old name warns): the name of the
# KV-cache argument of forward/generate and of the output field, as installed
CACHE_KWARG = _cache_kwarg()

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name_or_path: str, *, check: bool = False, trust_remote_code: bool = False) -> str:
    """Map a bundled name to its folder; leave local paths and hub ids as they are.

    With ``check``, make sure the model can be found now: a local folder must hold a
    ``config.json``; anything else is read as a hub id and its config fetched (the user named it).
    """
    if name_or_path in BUNDLED_MODELS:
        path = BUNDLED_MODELS[name_or_path]
        if check and not (path / "config.json").is_file():
            raise FileNotFoundError(f"bundled model {name_or_path!r} is missing from {path}; "
                                    "rebuild it with `python scripts/make_tiny_model.py`")
        return str(path)
    local = Path(name_or_path).expanduser()
    if local.exists():
        if check and not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local} has no config.json: not a transformers model folder")
        return str(local)
    if check:
        if name_or_path.startswith(("/", ".", "~")):
            raise FileNotFoundError(f"no such model folder: {name_or_path}")
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except Exception as exc:  # transformers raises several types for "not found"
            raise FileNotFoundError(
                f"{name_or_path!r} is neither a local model folder nor a reachable hub model "
                f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    return name_or_path


def load_tokenizer(config: ModelConfig):
    from transformers import AutoTokenizer

    path = resolve_model_path(config.name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token_id is None:  # many causal LMs ship without one
        tokenizer.pad_token = tokenizer.eos_token
    if config.chat_template:
        from rlkit.chat import template_text

        tokenizer.chat_template = template_text(config.chat_template)
    return tokenizer


def load_model(config: ModelConfig, *, trainable: bool = True):
    """The causal LM in the configured dtype, wrapped with LoRA adapters when ``lora_r > 0``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(config.name_or_path)
    # every actor loads the model; a per-tensor "Loading weights" bar from each only buries the
    # run's own progress (downloads from the hub keep their bars: that is huggingface_hub's)
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[config.dtype], trust_remote_code=config.trust_remote_code)
    if trainable and config.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.lora_target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    """Weights a generation engine needs: the merged full weights, on CPU.

    With LoRA the adapters are merged into a copy so rollout workers keep a plain model.
    """
    fresh = hasattr(model, "peft_config")  # the merged copy is the model's already; otherwise copy
    return {k: v.cpu() if fresh else v.cpu().clone() for k, v in generation_weights(model).items()}


def generation_weights(model) -> dict[str, torch.Tensor]:
    """The same weights where they live (the learner's device), for a broadcast: the model's own
    tensors, not copies (a merged copy with LoRA)."""
    if hasattr(model, "peft_config"):
        return {k: v.detach() for k, v in _merged_copy(model).state_dict().items()}
    return {k: v.detach() for k, v in model.state_dict().items()}


def _merged_copy(peft_model):
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()
