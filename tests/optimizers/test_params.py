import pytest

from optimizers.params import accepted_names, parse_params, parse_value, split_params
from programs import ConfigError


@pytest.mark.parametrize("text, value", [
    ("8", 8), ("0.5", 0.5), ("true", True), ("False", False), ("none", None),
    ('{"a": 1}', {"a": 1}), ("[1, 2]", [1, 2]), ("light", "light"), ("東京", "東京"),
])
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_parse_params_normalises_dashes():
    assert parse_params(["max-labeled-demos=3", "auto=light"]) == {"max_labeled_demos": 3, "auto": "light"}


@pytest.mark.parametrize("pair", ["novalue", "=3"])
def test_malformed_pairs(pair):
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_params([pair])


def test_split_params_and_suggestion():
    def init(self, metric, k=1, max_rounds=2): ...
    def compile(self, student, *, trainset, sample=True): ...

    init_names = accepted_names(init, exclude=("metric",))
    compile_names = accepted_names(compile, exclude=("student", "trainset"))
    assert split_params({"k": 2, "sample": False}, init_names, compile_names, "x") == ({"k": 2}, {"sample": False})
    with pytest.raises(ConfigError, match=r"no setting 'max_round'\. Did you mean 'max_rounds'"):
        split_params({"max_round": 1}, init_names, compile_names, "x")
