"""Offline preference optimization on (prompt, chosen, rejected) pairs: the losses (DPO, POWER with
dynamic labels, registered on import) and the checked loading of pairs. The trainer that runs
them is being built (issue 12)."""

from rlkit.preference.data import PreferencePair, load_pairs
from rlkit.preference.losses import DPO, POWER, PairBatch, dynamic_label_update

__all__ = ["DPO", "POWER", "PairBatch", "PreferencePair", "dynamic_label_update", "load_pairs"]
