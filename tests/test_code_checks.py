"""Cutting snippet tests apart (``code_checks``) and the values that cross between the phases
(``code_phases``), in this process; ``test_code_exec.py`` runs both phases in the sandbox."""

from __future__ import annotations

import json
import math

import pytest

from rlkit.rewards import code_phases as phases
from rlkit.rewards.code_checks import split_suite


def split(*snippets: str, setup: str = ""):
    return split_suite(setup, tuple(snippets))


def phase1(result) -> list[tuple[str, str]]:
    return [(step.kind, step.source) for step in result.steps]


# --- the cut ------------------------------------------------------------------------------------

def test_leaves_are_the_chains_rooted_at_the_programs_names():
    result = split("assert f(1) == 2", "assert abs(s.two_sum([2, 7], 9)[0] - CONST) < 1e-3",
                   "assert len(f(3)) == 3 and sorted(g(x=[3, 1])) == [1, 3]")
    assert phase1(result) == [("value", "f(1)"), ("value", "s.two_sum([2, 7], 9)[0]"), ("value", "CONST"),
                              ("value", "f(3)"), ("value", "g(x=[3, 1])")]
    assert result.tests == ("assert _rlkit_v(0) == 2", "assert abs(_rlkit_v(1) - _rlkit_v(2)) < 0.001",
                            "assert len(_rlkit_v(3)) == 3 and sorted(_rlkit_v(4)) == [1, 3]")
    assert result.labels == ("f(1)", "s.two_sum([2, 7], 9)[0]", "CONST", "f(3)", "g(x=[3, 1])")


def test_expected_values_stay_out_of_phase_one():
    result = split("assert f(1) == EXPECTED", "assert math.isclose(f(2), 0.987654)",
                   setup="import math\nEXPECTED = 123456\nINPUT = [5, 6]\nassert_input = INPUT")
    sources = " ".join(step.source for step in result.steps)
    assert "123456" not in sources and "987654" not in sources and "INPUT" not in sources
    assert result.setup == "import math\nEXPECTED = 123456\nINPUT = [5, 6]\nassert_input = INPUT"


def test_test_side_statements_a_leaf_needs_run_on_both_sides():
    result = split("assert f(data) == expected == reference(data)", setup="import math\nunused = 9\n"
                   "data = [3, 1]\ndata.append(4)\nexpected = sorted(data)\ndef reference(xs):\n    return sorted(xs)")
    assert phase1(result) == [("run", "import math"), ("run", "data = [3, 1]"), ("run", "data.append(4)"),
                              ("value", "f(data)")]


def test_statements_only_the_program_can_run_stay_on_its_side():
    result = split("s = Solution()\ns.size = 3\ns.push(4)\nassert s.top() == 4", "del s")
    assert phase1(result) == [("exec", "s = Solution()"), ("exec", "s.size = 3"), ("exec", "s.push(4)"),
                              ("value", "s.top()"), ("exec", "del s")]
    assert result.tests == ("_rlkit_do(0)\n_rlkit_do(1)\n_rlkit_do(2)\nassert _rlkit_v(3) == 4", "_rlkit_do(4)")


def test_data_passed_into_the_program_is_read_back_from_it():
    result = split("nums = [3, 1, 2]\nsort_in_place(nums)\nassert nums == [1, 2, 3]")
    assert phase1(result) == [("run", "nums = [3, 1, 2]"), ("exec", "sort_in_place(nums)"), ("value", "nums")]
    assert result.tests[0].endswith("assert _rlkit_v(1) == [1, 2, 3]")


def test_helpers_and_builtins_of_the_tests_run_in_the_checker():
    result = split("assert approx(f(1), 0.5)", "assert isinstance(f(2), int) and f(3) is None",
                   setup="def approx(a, b):\n    return abs(a - b) < 1e-9")
    assert phase1(result) == [("value", "f(1)"), ("value", "f(2)"), ("value", "f(3)")]
    assert result.tests[1] == "assert isinstance(_rlkit_v(1), int) and _rlkit_v(2) is None"


def test_a_call_made_for_its_effect_inside_a_compound_statement_is_looked_up_for_what_it_raised():
    result = split("try:\n    f(-1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError")
    assert phase1(result) == [("exec", "f(-1)")]
    assert "_rlkit_do(0)" in result.tests[0]


@pytest.mark.parametrize("test, why", [
    ("assert all(f(x) == x for x in range(3))", "`f(x)` uses `x`, which the test binds itself"),
    ("for x in [1, 2]:\n    assert f(x) > 0", "`f(x)` uses `x`, which the test binds itself"),
    ("r = f(1) + 1\nassert g(r) == 3", "`g(r)` uses `r`, which the checker computes"),
    ("if True:\n    s.x = 3", "`s.x` changes the program's object"),
])
def test_leaves_phase_one_cannot_evaluate_fail_their_test_with_the_reason(test, why):
    result = split(test)
    assert "_rlkit_refuse(" in result.tests[0] and why in result.tests[0]


def test_a_setup_helper_that_calls_the_solution_with_its_arguments_cannot_be_cut():
    result = split("assert check(3)", setup="def check(x):\n    return f(x) == x + 1")
    assert result.setup.startswith("_rlkit_refuse(") and "`f(x)` uses `x`" in result.setup


def test_star_imports_bind_the_modules_names_or_refuse():
    result = split("assert isclose(f(1), 0.5)", setup="from math import *")
    assert phase1(result) == [("run", "from math import *"), ("value", "f(1)")]
    assert result.tests == ("assert isclose(_rlkit_v(0), 0.5)",)
    result = split("assert isclose(f(1), 0.5)", setup="from not_a_stdlib_module import *")
    assert result.setup.startswith("_rlkit_refuse(") and result.tests[0].startswith("_rlkit_refuse(")


def test_a_snippet_that_does_not_parse_is_passed_on_for_phase_two_to_report():
    assert split("assert (").tests == ("assert (",)


# --- values across the phases ---------------------------------------------------------------------

def roundtrip(value):
    encode = phases.make_encoder(1_000_000)
    return phases.decode(json.loads(encode(value)))


def test_plain_values_cross_exactly():
    value = {1: [1.5, "é", b"\x00x", None, True, (1, (2,)), frozenset({2}), {3}, 2**200, -3j, {"k": [()]}]}
    back = roundtrip(value)
    assert back == value and type(back[1][5]) is tuple and type(back[1][6]) is frozenset
    assert math.isnan(roundtrip(float("nan"))) and roundtrip(float("-inf")) == float("-inf")
    assert roundtrip(False) is False and roundtrip(None) is None


def test_subclasses_cross_as_their_base_value_read_with_the_base_types_methods():
    class Liar(int):
        def __eq__(self, other):
            return True

        def __repr__(self):
            return "999"

    class Text(str):
        def __str__(self):
            return "lie"

    class Items(list):
        def __iter__(self):
            return iter([7])

    back = roundtrip([Liar(5), Text("abc"), Items([1, 2])])
    assert back == [5, "abc", [1, 2]] and [type(v) for v in back] == [int, str, list]


def test_other_objects_cyclic_and_oversized_values_do_not_cross():
    encode = phases.make_encoder(1_000)
    cyclic = []
    cyclic.append(cyclic)
    assert json.loads(encode(object())) == ["unencodable", "object"]
    assert json.loads(encode([1, (x for x in ())])) == ["unencodable", "generator"]
    assert json.loads(encode(cyclic))[0] == "unencodable"
    assert "larger than" in json.loads(encode("x" * 2_000))[1]


def test_lookups_rebuild_what_a_leaf_raised_and_refuse_what_cannot_be_checked():
    values = ['["raised","ValueError","bad"]', '["raised","MyError","custom"]', '["raised","SystemExit","0"]',
              '["unencodable","Foo"]', None, '["malformed"]', '["int","3"]', '["ok"]']
    value, effect, _ = phases.make_lookups(values, [f"f({i})" for i in range(len(values))], "no value came back")
    with pytest.raises(ValueError, match="bad"):
        value(0)
    with pytest.raises(phases.ProgramError, match="MyError: custom"):
        value(1)
    for index, match in ((2, "raised SystemExit"), (3, "cannot cross to the checker"), (4, "no value came back"),
                         (5, "malformed")):
        with pytest.raises(phases.CheckError, match=match):
            value(index)
    assert value(6) == 3 and effect(7) is None
    assert not issubclass(phases.CheckError, Exception)  # a test's `except Exception` cannot swallow it
