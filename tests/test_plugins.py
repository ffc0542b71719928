"""Plugins: a reward from an installed third-party package (entry point) and one from a loose file
both run from `rlkit train`; the registries name where each plugin came from and suggest close
names for a typo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlkit.plugins import PluginNotFoundError, Registry

RLKIT = str(Path(sys.executable).with_name("rlkit"))
# two steps of a small run: enough to call the rewards on every sampled completion
SMALL_RUN = ["--max_steps", "2", "--rollout.prompts_per_step", "8", "--learner.micro_batch_size", "64",
             "--data.eval_limit", "16", "--save_steps", "0", "--logging.progress", "false",
             "--logging.plot", "false", "--logging.tensorboard", "false"]


def _rlkit(*args: str, pythonpath: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run([RLKIT, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    """A separate distribution, ``quarter-reward``, installed with pip into its own folder."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    (source / "quarter_reward").mkdir(parents=True)
    (source / "quarter_reward" / "__init__.py").write_text(textwrap.dedent("""
        def quarter(prompts, completions, **kwargs):
            return [0.25 for _ in completions]
    """))
    (source / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "quarter-reward"
        version = "1.0"

        [project.entry-points."rlkit.rewards"]
        quarter = "quarter_reward:quarter"
    """))
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(site), str(source)], check=True, timeout=300)
    return site


def test_installed_package_is_listed_with_its_origin(installed_plugin):
    result = _rlkit("list", "rewards", pythonpath=installed_plugin)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "quarter" in line)
    assert "entry point" in line and "quarter-reward" in line


@pytest.mark.slow
def test_entry_point_reward_runs_from_rlkit_train(installed_plugin, tmp_path):
    run = tmp_path / "run"
    result = _rlkit("train", "--rewards.funcs", "[quarter]", "--output_dir", str(run), *SMALL_RUN,
                    pythonpath=installed_plugin)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [m["reward_mean"] for m in _metrics(run)] == [0.25, 0.25]  # every completion scored by the plugin


@pytest.mark.slow
def test_loose_file_reward_runs_from_rlkit_train(tmp_path):
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text(textwrap.dedent("""
        def half(prompts, completions, **kwargs):
            return [0.5 for _ in completions]

        def flaky(prompts, completions, **kwargs):
            return [float("nan")] + [0.0] * (len(completions) - 1)  # one bad value per call
    """))
    run = tmp_path / "run"
    result = _rlkit("train", "--rewards.funcs", f"[exact_match, {plugin}:half, {plugin}:flaky]",
                    "--rewards.weights", "[1.0, 2.0, 1.0]", "--output_dir", str(run), *SMALL_RUN, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = _metrics(run)
    assert len(metrics) == 2
    # totals are exact_match + 2 · 0.5: the file's reward adds exactly 1 to every completion, and the
    # base model solves some but not all problems (exact_match alone stays within [0, 1])
    assert all(1.0 < m["reward_mean"] < 2.0 for m in metrics)
    # the NaN is a counted failure, kept with its sample in failures.jsonl; the run went on
    assert all(m["failures"] >= 1 for m in metrics)
    failures = [json.loads(line) for line in (run / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == sum(m["failures"] for m in metrics)
    assert {f["reward"] for f in failures} == {f"{plugin}:flaky"} and all("completion" in f for f in failures)


def test_typo_gets_close_matches_and_a_file_reference_names_the_missing_function(tmp_path):
    from rlkit.plugins import rewards

    with pytest.raises(PluginNotFoundError, match="did you mean 'exact_match'"):
        rewards.get("exact_mach")
    plugin = tmp_path / "mine.py"
    plugin.write_text("def shout(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    assert rewards.get(f"{plugin}:shout")(["p"], ["c"]) == [1.0]
    with pytest.raises(PluginNotFoundError, match="did you mean shout"):
        rewards.get(f"{plugin}:shoot")
    with pytest.raises(PluginNotFoundError, match="no such file"):
        rewards.get(f"{tmp_path}/absent.py:shout")
    assert rewards.get("rlkit.rewards.exact_match:exact_match").__name__ == "exact_match"


def test_decorator_registers_and_refuses_a_second_plugin_under_the_same_name():
    registry: Registry = Registry("reward", "rlkit.tests.none", ())

    @registry.register("twice")
    def first(prompts, completions, **kw):
        return [0.0] * len(completions)

    assert registry.get("twice") is first
    assert registry.entries()[0].origin.startswith("decorator in")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("twice", lambda prompts, completions, **kw: [])


@pytest.mark.parametrize("overrides, message", [
    ({"rewards.funcs": "[format]", "rewards.args": "{format: {patern: x}}"}, "rewards.args.format.patern"),
    ({"rewards.funcs": "[exact_match]", "rewards.args": "{format: {pattern: x}}"}, "no reward 'format'"),
    ({"rewards.funcs": "[exact_match]", "rewards.args": "{exact_match: {strip: true}}"}, "takes no arguments"),
    ({"env.name": "arith_retry", "objective.name": "aepo"}, "multi-turn"),
])
def test_bad_reward_args_and_unsupported_combinations_are_refused(overrides, message):
    from rlkit.config import ConfigError
    from rlkit.validation import load_config
    from rlkit.validation import validate

    with pytest.raises(ConfigError, match=message):
        validate(load_config(None, overrides))


def test_trl_reward_functions_work_unchanged():
    from trl.rewards import get_repetition_penalty_reward, get_soft_overlong_punishment

    from rlkit.config import RewardsConfig
    from rlkit.reward_pool import build_reward_scorer

    overlong = get_soft_overlong_punishment(max_completion_len=8, soft_punish_cache=4)
    repetition = get_repetition_penalty_reward(ngram_size=2, max_penalty=-1.0)
    ids = [[5, 6, 7], [5, 5, 5, 5, 5, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    texts = ["abc", "aaaaaa", "abcdefghi"]
    scorer = build_reward_scorer([("overlong", overlong), ("repetition", repetition)], [1.0, 0.5],
                                 RewardsConfig(num_workers=0))
    outcome = scorer.score(["p"] * 3, texts, ids, [{"prompt": "p"}] * 3)
    expected_overlong = overlong(completion_ids=ids)
    expected_repetition = repetition(completion_ids=ids)
    assert expected_overlong == [0.0, -0.5, -1.0]  # TRL's own values: within 4, 2 into the cache, past 8
    assert [c["overlong"] for c in outcome.components] == expected_overlong
    assert [c["repetition"] for c in outcome.components] == expected_repetition
    assert outcome.totals == pytest.approx([o + 0.5 * r for o, r in zip(expected_overlong, expected_repetition)])
    assert not outcome.failures


def test_failures_file_is_cut_back_to_the_checkpoint_on_resume(tmp_path):
    from rlkit.runs import RunDirectory

    run = RunDirectory(tmp_path)
    run.append_failures(1, [{"reward": "r", "error": "boom"}])
    run.append_failures(3, [{"reward": "r", "error": "again"}, {"reward": "s", "error": "nan"}])
    run.append_failures(4, [])
    assert len(run.failures_path.read_text().splitlines()) == 3
    run.truncate_failures_after(2)  # steps 3 and later will run again after the resume
    assert [json.loads(line) for line in run.failures_path.read_text().splitlines()] == [
        {"step": 1, "reward": "r", "error": "boom"}]
