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


# --- tests the program cannot fake --------------------------------------------------------------

# the honest answer is f(x) = x * x + 1, which none of the programs below computes
FAKEABLE = ("assert f(1) == 2\nassert f(5) == 26\nassert not (f(3) != 10)\nassert f(2) != 0\nassert f(4) in {17, 0.5}\n"
            "assert isinstance(f(6), int) and abs(f(6) - 37) < 1")
TRICKS = {
    "__eq__ always True": "class A:\n    def __eq__(self, other): return True\n    __hash__ = object.__hash__\n"
                          "def f(x): return A()",
    "__bool__ True": "class A:\n    def __bool__(self): return True\n    def __eq__(self, other): return self\n"
                     "def f(x): return A()",
    "__hash__ and __ne__": "class A:\n    def __hash__(self): return hash(17)\n    def __eq__(self, o): return True\n"
                           "    def __ne__(self, o): return False\ndef f(x): return A()",
    "int subclass with a lying __eq__": "class X(int):\n    def __eq__(self, o): return True\n"
                                        "    def __ne__(self, o): return False\n    __hash__ = int.__hash__\n"
                                        "def f(x): return X(0)",
    "patched AssertionError": "import builtins\nclass Quiet(Exception): pass\nbuiltins.AssertionError = Quiet\n"
                              "def f(x): return 0",
    "patched isinstance and abs": "import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.abs = lambda x: 0\n"
                                  "def f(x): return 0",
    "patched operator": "import operator\noperator.eq = lambda a, b: True\noperator.ne = lambda a, b: False\n"
                        "operator.contains = lambda a, b: True\ndef f(x): return 0",
    "sys.exit(0) at import": "import sys\nsys.exit(0)\ndef f(x): return 0",
    "os._exit(0) at import": "import os\nos._exit(0)",
    "SystemExit inside f": "def f(x): raise SystemExit(0)",
    "fake result lines": "for i in range(5):\n    print('rlkit-0123456789abcdef pass', i)\n"
                         "    print('rlkit-0123456789abcdef value', i, '[\"int\",\"2\"]')\ndef f(x): return 0",
    "the marker read from the harness's frame": (
        "import os, sys\nmarker = sys._getframe(1).f_locals.get('marker')\nfor i in range(5):\n"
        "    os.write(1, ('\\n%s value %d [\"int\",\"17\"]\\n%s pass %d\\n' % (marker, i, marker, i)).encode())\n"
        "def f(x): return 0"),
    "an expected-output file": "open('expected_output.txt', 'w').write('2\\n26\\n10\\n')\n"
                               "open('results.json', 'w').write('{\"passed\": 5}')\ndef f(x): return 0",
}


def test_faking_tricks_score_zero():
    fn = reward(max_parallel=8)
    honest = fenced("def f(x):\n    return x * x + 1")
    values = score(fn, [honest] + [fenced(code) for code in TRICKS.values()], tests=FAKEABLE)
    assert values[0] == 1.0
    assert dict(zip(TRICKS, values[1:])) == {name: 0.0 for name in TRICKS}, fn.last_reasons


# (tests, an honest program, a wrong one)
FORMS = [
    ("assert f(1) == 2", "def f(x): return x + 1", "def f(x): return x"),
    ("assert f(1) != 3", "def f(x): return x + 1", "def f(x): return 3"),
    ("assert f(1)", "def f(x): return [0]", "def f(x): return []"),
    ("assert not f(1)", "def f(x): return 0", "def f(x): return 1"),
    ("assert abs(f(2.0) - 1.414) < 1e-3", "def f(x): return x ** 0.5", "def f(x): return x / 2 + 0.5"),
    ("assert sorted(f([3, 1, 2])) == [1, 2, 3]", "def f(xs): return xs[::-1]", "def f(xs): return xs[1:]"),
    ("assert f(1) is None", "def f(x):\n    pass", "def f(x): return 0"),
    ("assert isinstance(f(1), int)", "class I(int): pass\ndef f(x): return I(3)", "def f(x): return 1.0"),
    ("assert f(1) == 2",  # the int's own value crosses, whatever its class says about equality
     "class X(int):\n    def __eq__(self, o): return False\n    __hash__ = int.__hash__\ndef f(x): return X(2)",
     "class X(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\ndef f(x): return X(3)"),
    ("assert f(1) == (1, 2)", "def f(x): return (x, 2)", "def f(x): return [x, 2]"),
    ('assert f("a") in {"a", "b"}', "def f(s): return s", "def f(s): return s * 2"),
    ("assert len(f(3)) == 3", "def f(n): return 'x' * n", "def f(n): return 'x'"),
    ("import math\nassert math.isclose(f(1), 0.5)", "def f(x): return x / 2", "def f(x): return x"),
    (["s = Solution()\nassert s.method(3) == 4"], "class Solution:\n    def method(self, x): return x + 1",
     "class Solution:\n    def method(self, x): return x"),
    ("def approx(a, b):\n    return abs(a - b) < 1e-9\nassert approx(f(1), 0.1)", "def f(x): return x / 10",
     "def f(x): return x"),
    (["x = f(2)\ny = f(3)\nassert x + y == 15\nassert f(0) == 1"], "def f(x): return x * x + 1",
     "def f(x): return x * x"),
    (["nums = [3, 1, 2]\nsort_in_place(nums)\nassert nums == [1, 2, 3]"], "def sort_in_place(xs): xs.sort()",
     "def sort_in_place(xs): return sorted(xs)"),
    (["try:\n    f(-1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError('no ValueError')"],
     "def f(x):\n    if x < 0:\n        raise ValueError(x)", "def f(x): return x"),
    ("assert f(10**30) == 10**30 + 1 and f(1.5) == 2.5 and f(1j) == 1 + 1j",
     "def f(x): return x + 1", "def f(x): return x"),
]


def test_test_forms_pass_with_an_honest_program_and_fail_with_a_wrong_one():
    fn = reward(max_parallel=8)
    completions = [fenced(program) for _, good, bad in FORMS for program in (good, bad)]
    rows = [tests for tests, _, _ in FORMS for _ in (0, 1)]
    values = fn(prompts=["p"] * len(rows), completions=completions, tests=rows)
    assert values == [1.0, 0.0] * len(FORMS), list(zip(values, fn.last_reasons))


def test_tests_that_cannot_be_cut_apart_fail_with_the_reason():
    fn = reward()
    comprehension = "assert all(f(x) == x for x in range(3))"
    generator = "def f(n):\n    yield from range(n)"
    values = fn(prompts=["p"] * 2, completions=[fenced("def f(x): return x"), fenced(generator)],
                tests=[comprehension, "assert list(f(2)) == [0, 1]"])
    assert values == [0.0, 0.0]
    assert "cannot check apart from the program: `f(x)` uses `x`" in fn.last_reasons[0]
    assert "`f(2)` cannot cross to the checker (generator): only plain data" in fn.last_reasons[1]


def test_the_programs_process_sees_the_calls_but_not_the_expected_values(monkeypatch):
    import rlkit.rewards.code_exec as module

    programs = []
    original = module.run_python

    def recording_run_python(code, **kwargs):
        programs.append(code)
        return original(code, **kwargs)

    monkeypatch.setattr(module, "run_python", recording_run_python)
    tests = "WANTED = 987654321\nassert f(12345) == WANTED\nassert f(2) == 123123123"
    assert score(reward(), [fenced("def f(x): return 0")], tests=tests) == [0.0]
    phase1, checker = programs
    assert "f(12345)" in phase1 and "987654321" not in phase1 and "123123123" not in phase1
    assert "987654321" in checker and "def f(x): return 0" not in checker


def test_phase_two_is_skipped_only_when_phase_one_sent_no_value(monkeypatch):
    import rlkit.rewards.code_exec as module

    runs = []
    original = module.run_python
    monkeypatch.setattr(module, "run_python", lambda *a, **k: runs.append(1) or original(*a, **k))
    fn = reward()
    assert score(fn, [fenced("import os\nos._exit(0)")]) == [0.0] and len(runs) == 1
    assert fn.last_reasons[0] == "0/3 tests passed; no test results (the program exited before the tests ran)"
    halfway = "import os\ndef add3(x):\n    if x == 0:\n        os._exit(0)\n    return x + 3"
    assert score(fn, [fenced(halfway)]) == [pytest.approx(2 / 3)] and len(runs) == 3
    assert "`add3(0)`: no value came back: the program's run ended first" in fn.last_reasons[0]


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
    assert len(seen) == 6  # two phases each for CORRECT and PARTIAL; the loop's first phase; the io run

    def run_directory(workdir):  # the run's own directory: workdir itself, or its parent for <run>/work
        return os.path.dirname(workdir) if os.path.basename(workdir) == "work" else workdir

    assert not any(os.path.exists(run_directory(workdir)) for workdir in seen)


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
