"""Make the bundled arithmetic preference pairs: the correct answer against the model's own mistake.

For each problem of the ``arith`` environment (difficulty 1, seed 0: its train and eval splits),
the bundled ``tiny-arith`` model samples ``--samples`` answers at temperature 1. The rejected
answer is the wrong one it sampled most often (ties: the first sampled); a problem it never gets
wrong takes a near miss instead (off by 1, 2 or 10, or digits swapped). The pairs are therefore
the preferences a verifier would give about this model's own outputs, which is what moves its
greedy answers. Written as JSON Lines with ``prompt``, ``chosen``, ``rejected``, ``answer`` and
``source`` (``sampled`` or ``near_miss``); labels are clean (``arith``'s ``pair_noise`` flips them).

    python scripts/make_arith_pairs.py --out rlkit/assets/arith-pairs
"""

from __future__ import annotations

import argparse
import collections
import json
import random
from pathlib import Path

from rlkit.config import RLConfig
from rlkit.envs.arith import near_miss
from rlkit.rollout.worker import RolloutWorker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="rlkit/assets/arith-pairs")
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    from rlkit import plugins

    env = plugins.envs.get("arith")()
    config = RLConfig()
    config.rollout.temperature = 1.0
    worker = RolloutWorker(config, [("exact_match", "exact_match")], threads=0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", env.dataset("train")[: args.train]), ("eval", env.dataset("eval"))):
        groups = worker.generate_groups(list(enumerate(rows)), seed=1234, group_size=args.samples)
        lines, sampled = [], 0
        for row, group in zip(rows, groups):
            wrong = collections.Counter(r.text.strip() for r in group.rollouts
                                        if r.text.strip() != row["answer"] and r.text.strip())
            if wrong:
                rejected, source = wrong.most_common(1)[0][0], "sampled"
                sampled += 1
            else:
                rejected, source = near_miss(int(row["answer"]), random.Random(row["prompt"])), "near_miss"
            lines.append(json.dumps({"prompt": row["prompt"], "chosen": row["answer"], "rejected": rejected,
                                     "answer": row["answer"], "source": source}))
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        print(f"{split}: {len(lines)} pairs, {sampled} with a sampled mistake")


if __name__ == "__main__":
    main()
