"""Build the bundled tiny model, deterministically, into rlkit/assets/tiny-arith/.

    python scripts/make_tiny_model.py [--steps N] [--out DIR]
    python scripts/make_tiny_model.py --layers 2 --steps 1600 --out rlkit/assets/tiny-arith-2l

The second line builds ``tiny-arith-2l``, the bundled collaborator of the F-TIS recipe: the same
tokenizer, half the depth, trained to the end of its schedule (another model, another warm start).

A character-level tokenizer (every printable ASCII character plus newline, and <pad> <bos>
<eos> <unk>) and a small Llama-style causal LM, warm-started by a short supervised run on the
``arith`` train split (difficulty 1: two-digit addition). The run is stopped early on purpose
(step 1000 of a 1600-step cosine schedule): the greedy pass rate on the held-out split lands
between 20% and 60%, so reinforcement learning has room to show.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import torch

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = [chr(c) for c in range(0x20, 0x7F)] + ["\n"]
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "rlkit" / "assets" / "tiny-arith"


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    # left padding is saved with the tokenizer: batched generation continues from the right edge
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                        eos_token="<eos>", unk_token="<unk>", model_max_length=128,
                                        clean_up_tokenization_spaces=False, padding_side="left")
    return tokenizer


def build_model(vocab_size: int, tokenizer, layers: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, rms_norm_eps=1e-5)
    return LlamaForCausalLM(config)


def target(row, answer_format: str = "plain") -> str:
    """What the model learns to write after the prompt: the answer, or (``echo``) the expression
    restated before it, ``23+58=81``: a low-entropy stretch, then the few tokens that decide."""
    return row["answer"] if answer_format == "plain" else row["prompt"] + row["answer"]


def encode_batch(rows, tokenizer, answer_format: str = "plain"):
    """Right-padded prompt+answer+eos, with labels on the answer and eos only."""
    seqs, labels = [], []
    for row in rows:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        answer = tokenizer(target(row, answer_format), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seqs.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    lab = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labels)):
        ids[i, :len(s)], lab[i, :len(l)], mask[i, :len(s)] = torch.tensor(s), torch.tensor(l), 1
    return ids, mask, lab


@torch.no_grad()
def greedy_pass_rate(model, tokenizer, rows, answer_format: str = "plain") -> float:
    prompts = [r["prompt"] for r in rows]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=6 if answer_format == "plain" else 16, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return sum(t.strip() == target(r, answer_format) for t, r in zip(texts, rows)) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="supervised steps taken (the build is deterministic)")
    parser.add_argument("--schedule-steps", type=int, default=1600,
                        help="length of the cosine learning-rate schedule; stopping before its end leaves "
                             "a model still mid-way through learning, which RL then carries on")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (tiny-arith: 4; tiny-arith-2l: 2)")
    parser.add_argument("--answer-format", choices=("plain", "echo"), default="plain",
                        help="plain: the answer (81); echo: the expression restated, then the answer (23+58=81), "
                             "what bench/ettrl.py uses to measure trees where forks can fall late")
    parser.add_argument("--report-every", type=int, default=0, help="print the eval pass rate every N steps")
    args = parser.parse_args()

    from rlkit.envs.arith import ArithEnv

    torch.manual_seed(0)
    torch.set_num_threads(1)  # bitwise-stable results across machines with different core counts
    env = ArithEnv(difficulty=1, seed=0)
    train, held_out = env.dataset("train"), env.dataset("eval")
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), tokenizer, layers=args.layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    # cosine decay: a smooth learning curve, so the stopping point is not a noisy high-lr step
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, args.schedule_steps) / args.schedule_steps)))
    rng = random.Random(0)
    start = time.time()
    model.train()
    for step in range(1, args.steps + 1):
        ids, mask, labels = encode_batch(rng.sample(train, 64), tokenizer, args.answer_format)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if args.report_every and step % args.report_every == 0:
            model.eval()
            print(f"step {step} loss {loss.item():.3f} "
                  f"pass {greedy_pass_rate(model, tokenizer, held_out, args.answer_format):.1%}")
            model.train()
    model.eval()
    rate = greedy_pass_rate(model, tokenizer, held_out, args.answer_format)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"saved {args.out}: {params:,} parameters, greedy pass rate {rate:.1%} on {len(held_out)} held-out "
          f"problems, {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
