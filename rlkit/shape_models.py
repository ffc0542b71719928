"""Random-init models of real models' shapes, for benchmarks and tests without downloads.

``make_shape_model(folder, "0.5b")`` writes a Llama with Qwen2.5-0.5B's shape (24 layers, hidden
896, 14 heads, 2 KV heads, MLP 4864; 415M parameters with a 32k vocabulary) and the bundled
character tokenizer with its vocabulary padded to that size. Random sampling then almost never
picks the end token, so completions run to full length, as the cost model of a real run assumes.
``"small"`` is the same kind at 4M parameters (2 layers, hidden 64) with the same vocabulary: the
vocabulary, not the layers, is what a real model's log-probs and sampling cost on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

SHAPES = {
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2},
    "small": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 2},
}
FIRST_FILLER = 0x4E00  # fill the vocabulary with CJK ideographs: single characters the arithmetic data never uses


def make_shape_model(folder: str | Path, shape: str = "small", *, vocab_size: int = 32_000, dtype: str = "bfloat16",
                     seed: int = 0) -> Path:
    """Write the model and tokenizer to ``folder`` (skipped if a model of that shape is there already)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlkit.models import BUNDLED_MODELS, DTYPES

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    folder = Path(folder)
    marker = folder / "rlkit_shape.json"
    wanted = {"shape": shape, "vocab_size": vocab_size, "dtype": dtype, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    source = BUNDLED_MODELS["tiny-arith"]
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    for offset in range(vocab_size - len(vocab)):
        vocab[chr(FIRST_FILLER + offset)] = len(vocab)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = 4096
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False, **SHAPES[shape])
    torch.manual_seed(seed)
    LlamaForCausalLM(config).to(DTYPES[dtype]).save_pretrained(folder)
    marker.write_text(json.dumps(wanted))
    return folder


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="write a random-init model of a real model's shape")
    parser.add_argument("folder")
    parser.add_argument("--shape", default="small", choices=sorted(SHAPES))
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    print(make_shape_model(args.folder, args.shape, dtype=args.dtype))
