"""The bundled tiny model: loads with the Auto classes, and is warm but far from solved."""

from __future__ import annotations

import pytest
import torch

from rlkit.envs.arith import ArithEnv
from rlkit.models import BUNDLED_MODELS

MODEL_DIR = BUNDLED_MODELS["tiny-arith"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()


def test_asset_files_are_small():
    weights = MODEL_DIR / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 8 * 2**20
    assert (MODEL_DIR / "tokenizer.json").is_file()


@pytest.mark.parametrize("text", ["12+7=19", "a b\n", "  x ", "".join(map(chr, range(0x20, 0x7F)))])
def test_tokenizer_round_trips_text_one_token_per_character(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in ids


def test_tokenizer_adds_no_special_tokens_and_knows_its_own(tokenizer):
    assert tokenizer("12+7=")["input_ids"] == tokenizer("12+7=", add_special_tokens=False)["input_ids"]
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    assert None not in ids and len(ids) == 4
    assert tokenizer.decode([tokenizer.eos_token_id], skip_special_tokens=True) == ""


def test_model_size_and_generation_config(model, tokenizer):
    params = sum(p.numel() for p in model.parameters())
    assert 300_000 <= params <= 2_000_000
    assert model.config.tie_word_embeddings
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


@torch.no_grad()
def test_greedy_pass_rate_on_held_out_split_leaves_room_for_rl(model, tokenizer):
    rows = ArithEnv(difficulty=1, seed=0).dataset("eval")
    assert tokenizer.padding_side == "left"  # saved so: batched generation continues from the right edge
    batch = tokenizer([r["prompt"] for r in rows], return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    rate = sum(t.strip() == r["answer"] for t, r in zip(texts, rows)) / len(rows)
    assert 0.20 <= rate <= 0.60, rate
