"""Test-wide settings, applied before Ray or transformers are imported."""

import os

# Every Ray cluster a test starts (in-process or with launch/local_cluster.sh) stays on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Tests never reach the hub: the bundled model and generated data are all they use.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

SHARED_RAY_CPUS = 8  # enough for the largest in-process run of the suite (ranks, workers, F-TIS peers)


RUN_ACTOR_CLASSES = ("Learner", "PreferenceLearner", "RolloutWorker")  # what a run starts, and must stop


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        item.rlkit_failed = True  # read by one_ray_session_for_many_tests


@pytest.fixture(autouse=True)
def one_ray_session_for_many_tests(request):
    """In-process runs join one Ray session instead of each starting and stopping their own.

    A trainer that finds Ray running uses it and leaves it running; starting a session and
    shutting it down costs about 5 s, and the suite makes over a hundred runs. The session is
    started the way a run starts it (``rlkit.cluster.start_ray``). After a test that failed, or
    that left a run's actor alive, or that stopped the session itself, the next test starts a
    fresh one, so no test inherits another's actors. Tests marked ``own_ray`` get no session:
    they start (or join) the clusters they need themselves.
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
    if ray.is_initialized() and (getattr(request.node, "rlkit_failed", False) or not _no_run_actors(within_s=10.0)):
        ray.shutdown()


def _no_run_actors(within_s: float) -> bool:
    """Whether every learner and rollout worker is dead within the bound (a run's actors, killed at
    its end, die asynchronously). Other actors (a module's reward pool) may live on."""
    import time

    from ray._private import state

    deadline = time.monotonic() + within_s
    while True:
        left = {info["ActorClassName"]: info["State"] for info in state.actors().values()
                if info["State"] != "DEAD" and info["ActorClassName"] in RUN_ACTOR_CLASSES}
        if not left or time.monotonic() > deadline:
            if left:
                print(f"run actors left alive by the test: {left}; the next test starts a fresh Ray session")
            return not left
        time.sleep(0.1)


def pytest_terminal_summary(terminalreporter):
    """The count of docs examples this session executed (tests/test_docs_examples.py)."""
    ran = {outcome: sum(1 for report in terminalreporter.stats.get(outcome, [])
                        if report.when == "call" and "test_a_docs_example_runs[" in report.nodeid)
           for outcome in ("passed", "failed")}
    if ran["passed"] or ran["failed"]:
        terminalreporter.write_line(f"docs examples executed: {ran['passed']} passed, {ran['failed']} failed "
                                    "(tests/test_docs_examples.py; the blocks not run say why on their page)")
