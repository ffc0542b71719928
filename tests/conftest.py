"""Test-wide settings, applied before Ray or transformers are imported."""

import os

# Every Ray cluster a test starts (in-process or with launch/local_cluster.sh) stays on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Tests never reach the hub: the bundled model and generated data are all they use.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

SHARED_RAY_CPUS = 8  # enough for the largest in-process run of the suite (ranks, workers, F-TIS peers)


@pytest.fixture(autouse=True)
def one_ray_session_for_many_tests(request):
    """In-process runs join one Ray session instead of each starting and stopping their own.

    A trainer that finds Ray running uses it and leaves it running; starting a session and
    shutting it down costs about 5 s, and the suite makes over a hundred runs. The session is
    started the way a run starts it (``rlkit.cluster.start_ray``). After a test that left an actor
    alive (one that failed midway), or that stopped the session itself, the next test starts a
    fresh one, so no test inherits another's actors. Tests marked ``own_ray`` get no session: they
    start (or join) the clusters they need themselves.
    """
    import ray

    from rlkit.cluster import start_ray
    from rlkit.validation import load_config

    if request.node.get_closest_marker("own_ray"):
        if ray.is_initialized():
            ray.shutdown()
        yield
        return
    if not ray.is_initialized():
        start_ray(load_config(None, {"cluster.num_cpus": str(SHARED_RAY_CPUS)}))
    yield
    if ray.is_initialized() and not _no_live_actors(within_s=10.0):
        ray.shutdown()


def _no_live_actors(within_s: float) -> bool:
    """Whether every actor is dead within the bound (actors killed at a run's end die asynchronously)."""
    import time

    from ray._private import state

    deadline = time.monotonic() + within_s
    while True:
        live = {actor_id: info["State"] for actor_id, info in state.actors().items() if info["State"] != "DEAD"}
        if not live or time.monotonic() > deadline:
            if live:
                print(f"live actors after the test: {live}")
            return not live
        time.sleep(0.1)
