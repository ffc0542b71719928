"""The `code_exec` reward and the `code` environment."""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest

import rlkit.plugins
from rlkit.envs.code import CodeEnv, bundled_pool
from rlkit.rewards.code_exec import CodeExecReward, extract_program, parse_tests

TESTS = "assert add3(1) == 4\nassert add3(-5) == -2\nassert add3(0) == 3"
CORRECT = "Here you go:\n```python\ndef add3(x):\n    return x + 3\n```\nDone."
PARTIAL = "```python\ndef add3(x):\n    return x + 3 if x > 0 else x + 2\n```"  # passes 1 of 3


def reward(**kwargs) -> CodeExecReward:
    # programs that should pass get a wall clock no slow machine uses up; tests of timeouts set theirs
    return CodeExecReward(**{"timeout_s": 20.0, "max_parallel": 4, **kwargs})


def score(fn: CodeExecReward, completions: list[str], tests=TESTS) -> list[float | None]:
    return fn(prompts=["p"] * len(completions), completions=completions, completion_ids=[[0]] * len(completions),
              tests=[tests] * len(completions))


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


# --- program extraction and test parsing ---------------------------------------------------------

def test_the_last_python_block_is_the_program():
    text = "```python\nold\n```\ntext\n```\nuntagged\n```\n```py\nnew\n```\n"
    assert extract_program(text) == "new\n"
    assert extract_program("```\nonly untagged\n```") == "only untagged\n"
    assert extract_program("def f(): pass") == "def f(): pass"
    assert extract_program("intro\n```python\ndef f():\n    return 1") == "def f():\n    return 1"  # cut off


def test_tests_parse_from_source_lists_and_json():
    suite = parse_tests("import math\nassert math.floor(f(1.5)) == 1\nassert f(2) == 2")
    assert suite.setup == "import math" and len(suite.snippets) == 2
    suite = parse_tests(["assert f(1) == 1", {"stdin": "1\n", "stdout": "2\n"}, {"input": "", "output": "x"}])
    assert len(suite.snippets) == 1 and [t.stdout for t in suite.io] == ["2\n", "x"]
    assert parse_tests(json.dumps(["assert True", "assert 1"])).count == 2
    for bad in ("", "x = 1", "assert (", 42, [{"stdin": "1"}]):
        with pytest.raises(ValueError):
            parse_tests(bad)


# --- scoring ----------------------------------------------------------------------------------

def test_correct_partial_and_syntax_error(caplog):
    fn = reward()
    with caplog.at_level(logging.WARNING, logger="rlkit.rewards.code_exec"):
        values = score(fn, [CORRECT, PARTIAL, fenced("def add3(x) return x + 3")])
    assert values == [1.0, pytest.approx(1 / 3), 0.0]
    assert fn.last_reasons[0] is None
    assert fn.last_reasons[1].startswith("1/3 tests passed; test 1 failed: AssertionError")
    assert fn.last_reasons[2].startswith("syntax error")
    assert "syntax error" in caplog.text


def test_all_or_nothing_and_conversational_completions():
    fn = reward(all_or_nothing=True)
    values = score(fn, [[{"role": "assistant", "content": CORRECT}], PARTIAL])
    assert values == [1.0, 0.0]


def test_an_error_at_top_level_still_runs_the_tests():
    program = "def add3(x):\n    return x + 3\nprint(add3(int(input())))"  # input() meets EOF
    assert score(reward(), [fenced(program)]) == [1.0]


def test_io_tests_compare_stdout():
    tests = [{"stdin": "2 3\n", "stdout": "5\n"}, {"stdin": "10 -4\n", "stdout": "6"}]
    fn = reward()
    good = fenced("a, b = map(int, input().split())\nprint(a + b)")
    bad = fenced("a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)")
    assert score(fn, [good, bad], tests=tests) == [1.0, 0.5]
    assert "io test 1" in fn.last_reasons[1]


def test_a_row_without_usable_tests_scores_none():
    fn = reward()
    assert score(fn, [CORRECT], tests="x = 1") == [None]
    assert fn.last_reasons[0].startswith("bad tests column")
    with pytest.raises(ValueError):
        fn(prompts=["p"], completions=[CORRECT])


def test_hostile_programs_score_zero_with_a_logged_reason_and_later_calls_work(tmp_path, caplog):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.setblocking(False)
    target = tmp_path / "escaped.txt"
    hostile = {
        # the wall clock or the CPU limit (both 5 s): which comes first depends on how busy the cores are
        "while True: pass": ("timeout after 5s", "cpu time limit (5s)"),
        "import os\nwhile True: os.fork()": "blocked: process creation",
        "x = bytearray(10 * 1024**3)": "memory limit",
        f"open({str(target)!r}, 'w').write('x')": "blocked: write outside work dir",
        f"import socket\nsocket.socket().connect(('127.0.0.1', {server.getsockname()[1]}))": "blocked: network",
        "print('x' * 100_000_000)": "output limit",
        "while True:\n    print('spam')": "output limit",
        "import os\nos.kill(os.getppid(), 9)": "blocked: signal to another process",
        f"import os\nos.kill({os.getpid()}, 9)": "blocked: signal to another process",
    }
    # a generous timeout: nine hostile programs share two busy cores, and building 100 MB of text
    # must reach the output cap before the clock runs out
    fn = reward(max_output_bytes=100_000, timeout_s=5.0, max_parallel=9)
    # a correct definition first, so only the hostile line can make the score 0
    completions = [fenced("def add3(x):\n    return x + 3\n" + code) for code in hostile]
    with caplog.at_level(logging.WARNING, logger="rlkit.rewards.code_exec"):
        values = score(fn, completions)
    assert values == [0.0] * len(hostile)
    for reason, expected in zip(fn.last_reasons, hostile.values()):
        assert reason.startswith(expected), (reason, expected)
        assert reason in caplog.text
    assert not target.exists()
    with pytest.raises(BlockingIOError):
        server.accept()
    server.close()
    assert score(fn, [CORRECT]) == [1.0] and fn.last_reasons == [None]  # the run goes on


def test_a_violation_inside_a_test_also_scores_zero():
    tests = "assert add3(1) == 4\nimport os\nassert os.system('true') == 0"
    fn = reward()
    assert score(fn, [CORRECT], tests=tests) == [0.0]
    assert fn.last_reasons[0].startswith("blocked: process creation")


def test_the_reward_is_registered_and_built_from_rewards_args():
    cls = rlkit.plugins.rewards.get("code_exec")
    assert cls is CodeExecReward
    assert cls(**{}).__name__ == "code_exec"
    with pytest.raises(ValueError):
        CodeExecReward(max_parallel=0)
    with pytest.raises(ValueError):
        CodeExecReward(timeout_s=-1)


# --- the `code` environment -------------------------------------------------------------------

def test_bundled_rows_have_prompts_and_three_assert_tests():
    env = CodeEnv()
    train, held_out = env.dataset("train"), env.dataset("eval")
    assert (len(train), len(held_out)) == (200, 40)
    for row in train + held_out:
        assert row["prompt"].startswith("Write a Python function `") and "```python" in row["prompt"]
        assert isinstance(row["tests"], str) and len(parse_tests(row["tests"]).snippets) == 3
    def names(rows):
        return {row["solution"].split("(")[0] for row in rows}
    assert not names(train) & names(held_out)
    assert len(names(train)) == 200
    assert CodeEnv().dataset("train") == train
    assert CodeEnv(seed=1).dataset("train") != train
    assert CodeEnv.default_rewards == ("code_exec",) and CodeEnv.required_columns == ("tests",)
    assert rlkit.plugins.envs.get("code") is CodeEnv
    with pytest.raises(ValueError):
        CodeEnv(train_size=len(bundled_pool()))
    with pytest.raises(ValueError):
        env.dataset("test")


def test_code_exec_scores_bundled_reference_solutions_as_one():
    rows = CodeEnv(train_size=8, eval_size=4).dataset("eval")
    fn = reward()
    completions = [fenced(row["solution"]) for row in rows] + [fenced(rows[0]["solution"].replace("return", "return 1 +"))]
    values = fn(prompts=[r["prompt"] for r in rows] + [rows[0]["prompt"]], completions=completions,
                tests=[r["tests"] for r in rows] + [rows[0]["tests"]])
    assert values[:-1] == [1.0] * len(rows)
    assert values[-1] < 1.0


def test_bundled_rows_pass_the_row_check():
    from rlkit.prompts import row_problem

    for row in CodeEnv(train_size=5, eval_size=5).dataset("train"):
        assert row_problem(row, "prompt", CodeEnv.required_columns, CodeEnv.list_columns) is None


def test_jsonl_problems_with_configured_columns(tmp_path):
    path = tmp_path / "problems.jsonl"
    lines = [{"question": f"Write f{i}", "checks": [f"assert f{i}() == {i}"], "id": i} for i in range(10)]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    env = CodeEnv(path=str(path), prompt_column="question", tests_column="checks", eval_fraction=0.2)
    train, held_out = env.dataset("train"), env.dataset("eval")
    assert (len(train), len(held_out)) == (8, 2)
    assert {r["id"] for r in train} | {r["id"] for r in held_out} == set(range(10))
    row = held_out[0]
    assert row["prompt"] == f"Write f{row['id']}" and json.loads(row["tests"]) == [f"assert f{row['id']}() == {row['id']}"]
    solution = fenced(f"def f{row['id']}():\n    return {row['id']}")
    assert reward()(prompts=[row["prompt"]], completions=[solution], tests=[row["tests"]]) == [1.0]
    separate = CodeEnv(path=str(path), eval_path=str(path), prompt_column="question", tests_column="checks")
    assert len(separate.dataset("train")) == len(separate.dataset("eval")) == 10


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "tests": "assert 1"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2"):
        CodeEnv(path=str(path)).dataset("train")
    with pytest.raises(ValueError, match="no such file"):
        CodeEnv(path=str(tmp_path / "missing.jsonl")).dataset("train")


def test_no_sandbox_directories_are_left_behind(monkeypatch):
    import rlkit.rewards.code_exec as module

    seen = []
    original = module.run_python

    def recording_run_python(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(result.workdir)
        return result

    monkeypatch.setattr(module, "run_python", recording_run_python)
    score(reward(timeout_s=2.0), [CORRECT, PARTIAL, fenced("while True: pass")], tests=TESTS)
    score(reward(), [fenced("print(input())")], tests=[{"stdin": "a", "stdout": "a"}])
    assert len(seen) == 4
    assert not any(os.path.exists(os.path.dirname(workdir)) for workdir in seen)


def test_a_batch_of_looping_programs_ends_within_the_call_budget():
    reward = CodeExecReward(timeout_s=1.0, max_parallel=1, call_budget_s=1.5)
    loop = "```python\ndef add3(x):\n    while True:\n        pass\n```"
    values = reward(["p"] * 3, [loop] * 3, tests=["assert add3(1) == 4"] * 3)
    # one program ran into its timeout; the other two were never started (their reasons say so)
    assert values == [0.0, 0.0, 0.0]
    assert "timeout" in reward.last_reasons[0]
    assert all("time budget" in reason for reason in reward.last_reasons[1:])


def test_a_file_with_list_valued_tests_passes_the_row_check(tmp_path):
    from rlkit.config import DataConfig
    from rlkit.prompts import check_rows

    rows = [{"prompt": "Write add3(x).", "tests": ["assert add3(1) == 4"]}]
    assert check_rows(rows, DataConfig(), "f.jsonl", required=CodeEnv.required_columns,
                      lists=CodeEnv.list_columns) == rows
    with pytest.raises(Exception, match="row 1: empty list"):
        check_rows([{"prompt": "x", "tests": []}], DataConfig(), "f.jsonl", required=("tests",), lists=("tests",))
    with pytest.raises(Exception, match="expected text or a number"):
        check_rows(rows, DataConfig(), "f.jsonl", required=("tests",))  # a column not declared list-valued


@pytest.mark.slow
def test_rlkit_train_runs_the_code_environment_end_to_end(tmp_path):
    from rlkit.validation import load_config
    from rlkit.runs import read_metrics
    from rlkit.trainer import RLTrainer

    overrides = {"env.name": "code", "max_steps": "1", "rollout.prompts_per_step": "8",
                 "rollout.num_generations": "2", "data.eval_limit": "4", "save_steps": "0",
                 "logging.progress": "false", "logging.plot": "false", "logging.tensorboard": "false",
                 "output_dir": str(tmp_path / "run")}
    summary = RLTrainer(args=load_config(None, overrides)).train()
    (metrics,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    # the arithmetic model writes no Python: every program fails its tests, none breaks the reward
    assert summary["steps"] == 1 and metrics["reward_mean"] == 0.0 and metrics["failures"] == 0
