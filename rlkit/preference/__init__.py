"""Offline preference optimization on (prompt, chosen, rejected) pairs: the losses (DPO, POWER with
dynamic labels), registered on import. The trainer that runs them is being built (issue 12)."""

from rlkit.preference.losses import DPO, POWER, PairBatch, dynamic_label_update

__all__ = ["DPO", "POWER", "PairBatch", "dynamic_label_update"]
