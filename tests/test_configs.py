"""Every family config and named recipe loads and is a config the trainer accepts; each recipe
value documented in docs/recipes.md is the one its config holds, and each field a recipe sets
away from the defaults is documented there."""

import functools
import pathlib
import re

import pytest

from configs import default, efficientnetv2, mobilenetv1, mobilenetv2, mobilenetv3, shufflenetv2
from lightnets.training import trainer

ROOT = pathlib.Path(__file__).resolve().parent.parent
FAMILIES = {
    "mobilenetv1": mobilenetv1,
    "mobilenetv2": mobilenetv2,
    "shufflenetv2": shufflenetv2,
    "efficientnetv2": efficientnetv2,
    "mobilenetv3": mobilenetv3,
}
# (config file, argument) for every recipe: each family's default and every named recipe.
RECIPES = [(name, "") for name in FAMILIES] + [
    (name, recipe) for name, module in FAMILIES.items() for recipe in getattr(module, "RECIPES", {})
]


def _config(name: str, argument: str):
    return FAMILIES[name].get_config(argument)


def _flat(config) -> dict:
    """field -> value, a nested config's fields dotted (`progressive.stages`), as the tables name them."""
    return {f: functools.reduce(lambda c, k: c[k], f.split("."), config) for f in trainer._fields(config)}


@pytest.mark.parametrize("name, argument", RECIPES)
def test_every_recipe_loads_and_passes_the_trainers_checks(name, argument):
    config = _config(name, argument)
    assert set(config.keys()) == set(default.get_config().keys())
    trainer.check_config(config)


def _documented() -> dict[tuple[str, str], dict[str, str]]:
    """docs/recipes.md's tables: (config file, argument) -> {field: value as written}."""
    tables, current = {}, None
    for line in (ROOT / "docs" / "recipes.md").read_text().splitlines():
        heading = re.match(r"## `configs/(\w+)\.py(?::(\w+))?`", line)
        if heading:
            current = tables.setdefault((heading[1], heading[2] or ""), {})
            continue
        row = re.match(r"\| `([\w.]+)` \| `([^`]*)` \|", line)
        if row and current is not None:
            assert row[1] not in current, f"{row[1]} documented twice"
            current[row[1]] = row[2]
    return tables


def _value(text: str):
    # The table's values are Python literals and simple fractions (4 / 3), in our own file.
    value = eval(text, {"__builtins__": {}})
    return list(value) if isinstance(value, tuple) else value


def test_docs_recipes_has_a_table_for_every_recipe():
    assert set(_documented()) == set(RECIPES)


@pytest.mark.parametrize("name, argument", RECIPES)
def test_docs_recipes_values_are_the_configs(name, argument):
    documented = _documented()[(name, argument)]
    config = _flat(_config(name, argument))
    defaults = _flat(default.get_config())
    for field, text in documented.items():
        assert field in config, f"docs/recipes.md documents {field}, which no config has"
        expected, actual = _value(text), config[field]
        actual = list(actual) if isinstance(actual, tuple) else actual
        numbers = isinstance(actual, float) or (isinstance(actual, list) and all(isinstance(v, float) for v in actual))
        same = expected == pytest.approx(actual, rel=1e-12) if numbers else expected == actual
        assert same, f"configs/{name}.py:{argument} {field} = {config[field]!r}, docs/recipes.md says {text}"
    # A named recipe's table lists what differs from its family's default recipe; a default
    # recipe's table lists every field it sets away from configs/default.py.
    base = _flat(_config(name, "")) if argument else defaults
    if argument:
        documented = {**_documented()[(name, "")], **documented}
    changed = {f for f in config.keys() if config[f] != base[f]}
    missing = sorted(changed - set(documented))
    assert not missing, f"configs/{name}.py:{argument} sets {missing}, which docs/recipes.md does not trace"
