"""Test-wide settings, applied before Ray or transformers are imported."""

import os

# Every Ray cluster a test starts (in-process or with launch/local_cluster.sh) stays on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Tests never reach the hub: the bundled model and generated data are all they use.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
