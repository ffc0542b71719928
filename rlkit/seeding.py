"""Sampling seeds that depend only on where a call sits in the run."""

from __future__ import annotations

import numpy as np


def chunk_seed(seed: int, step: int, chunk: int) -> int:
    """Sampling seed of one generation call. With the prompt's index in the step as the request's
    key, it fixes every sample of the step however the prompts are split among workers."""
    return int(np.random.SeedSequence([seed, step, chunk]).generate_state(1)[0])
