"""The config tree: precedence, TRL-style flat names, and errors that name the bad key."""

from __future__ import annotations

import pytest

from rlkit.config import (ConfigError, RLConfig, apply_overrides, describe_fields, parse_override_args, read_yaml,
                          recipe_names, recipe_path)
from rlkit.validation import load_config


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_flat_trl_names_route_to_their_sections():
    config = RLConfig(learning_rate=3e-4, num_generations=4, beta=0.1, seed=3, max_completion_length=5)
    assert config.learner.learning_rate == 3e-4
    assert config.rollout.num_generations == 4
    assert config.rollout.max_completion_length == 5
    assert config.objective.params == {"beta": 0.1}
    assert config.seed == 3


def test_precedence_defaults_recipe_file_overrides(tmp_path):
    path = write(tmp_path, "rollout:\n  temperature: 0.9\n  num_generations: 4\nobjective:\n  name: grpo\n  beta: 0.02\n")
    config = load_config(path, {"rollout.temperature": "0.5"}, recipe="grpo-arith-zero2")
    assert config.rollout.temperature == 0.5  # override beats file
    assert config.rollout.num_generations == 4  # file beats recipe (8)
    assert config.learner.zero_stage == 2 and config.learner.num_learners == 2  # from the recipe
    assert config.objective.params["beta"] == 0.02


def test_switching_the_objective_drops_the_fields_of_the_one_it_replaces(tmp_path):
    # ftis-arith sets truncation and filter_threshold, which grpo does not have
    config = load_config(None, {"objective.name": "grpo"}, recipe="ftis-arith")
    assert config.objective.name == "grpo" and config.objective.params == {}
    # the same name again keeps them; fields given with the new name are kept
    assert load_config(None, {"objective.name": "ftis"}, recipe="ftis-arith").objective.params["truncation"] == 2.0
    config = load_config(None, {"objective.name": "grpo", "objective.beta": "0.1"}, recipe="ftis-arith")
    assert config.objective.params == {"beta": 0.1}
    # in a YAML mapping the name counts first, wherever it is written
    path = write(tmp_path, "objective:\n  truncation: 3.0\n  name: ftis\n")
    assert load_config(path).objective.params == {"truncation": 3.0}


def test_exponent_floats_are_read_as_numbers_where_a_float_is_expected():
    # YAML 1.1 reads "3e-4" (no dot) as a string; a float field still takes it, a str field keeps it
    config = load_config(None, {"learner.learning_rate": "3e-4", "objective.epsilon": "2E-1",
                                "model.dtype": "float32"})
    assert config.learner.learning_rate == 3e-4
    from rlkit.objectives import objective_from_config

    assert objective_from_config("grpo", config.objective.params).config.epsilon == 0.2
    with pytest.raises(ConfigError, match="learner.learning_rate.*expected float"):
        load_config(None, {"learner.learning_rate": "nan"})


def test_override_parsing_forms():
    assert parse_override_args(["--a.b", "1", "--c=x", "--max-steps", "3"]) == {"a.b": "1", "c": "x", "max_steps": "3"}
    with pytest.raises(ConfigError, match="needs a value"):
        parse_override_args(["--a.b"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_override_args(["stray"])


@pytest.mark.parametrize("overrides, message", [
    ({"rollout.temprature": "1"}, "did you mean 'rollout.temperature'"),
    ({"num_generations": "4"}, "did you mean 'rollout.num_generations'"),
    ({"rollout.temperature": "hot"}, "rollout.temperature .*expected float, got 'hot'"),
    ({"learner.zero_stage": "1.5"}, "learner.zero_stage .*expected int"),
    ({"logging.progress": "maybe"}, "logging.progress .*expected bool"),
])
def test_bad_keys_and_types_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RLConfig(), overrides)


@pytest.mark.parametrize("overrides, message", [
    ({"learner.zero_stage": "4"}, "learner.zero_stage: 4 is not one of 0, 1, 2, 3"),
    ({"rollout.schedule": "eager"}, "rollout.schedule: 'eager' is not one of"),
    ({"rollout.num_generations": "1"}, "rollout.num_generations: must be >= 2"),
    ({"rollout.schedule": "sync", "rollout.max_staleness": "2"}, "max_staleness > 0 needs"),
    ({"objective.epsilom": "0.1"}, "epsilon"),
    ({"objective.name": "grpp"}, "did you mean 'grpo'"),
    ({"rewards.funcs": "exact_mach"}, "did you mean 'exact_match'"),
    ({"env.name": "arithm"}, "did you mean 'arith'"),
    ({"env.args.difficultie": "2"}, "did you mean env.args.difficulty"),
    ({"model.name_or_path": "./no/such/model"}, "no such model folder"),
    ({"data.train_file": "missing.jsonl"}, "data.train_file: no such file missing.jsonl"),
])
def test_validation_names_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "rollout:\n  num_generation: 4\n")
    with pytest.raises(ConfigError, match=r"rollout.num_generation.*cfg.yaml.*did you mean 'rollout.num_generations'"):
        load_config(path)


def test_missing_config_file_and_recipe():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("nope.yaml")
    with pytest.raises(ConfigError, match="unknown recipe 'grpo-arth'; did you mean grpo-arith"):
        load_config(None, recipe="grpo-arth")


def test_every_recipe_loads_and_every_field_is_documented():
    from rlkit.models import BUNDLED_MODELS

    for name in recipe_names():
        data = read_yaml(recipe_path(name))
        if data.get("model", {}).get("name_or_path", "tiny-arith") not in BUNDLED_MODELS:
            continue  # a hub model: fetching it needs the network (tests/test_chat.py checks the rest)
        load_config(None, recipe=name)
    for key, _, _, text in describe_fields():
        assert text, f"{key} has no help text"


def test_to_dict_round_trips_through_yaml(tmp_path):
    import yaml

    config = RLConfig(beta=0.04, num_generations=4)
    path = write(tmp_path, yaml.safe_dump(config.to_dict()))
    again = load_config(path)
    assert again.to_dict() == config.to_dict()

