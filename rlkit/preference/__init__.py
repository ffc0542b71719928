"""Offline preference optimization on (prompt, chosen, rejected) pairs: the losses (DPO, POWER with
dynamic labels, registered on import), the checked loading of pairs, and :class:`PreferenceTrainer`
(imported lazily: it pulls in Ray)."""

from rlkit.preference.data import PreferencePair, load_pairs
from rlkit.preference.losses import DPO, POWER, PairBatch, dynamic_label_update

__all__ = ["DPO", "POWER", "PairBatch", "PreferencePair", "PreferenceTrainer", "dynamic_label_update", "load_pairs"]


def __getattr__(name: str):
    if name == "PreferenceTrainer":
        from rlkit.preference.trainer import PreferenceTrainer

        return PreferenceTrainer
    raise AttributeError(f"module 'rlkit.preference' has no attribute {name!r}")
