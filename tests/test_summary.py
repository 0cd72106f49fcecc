"""Every variant against the reference counts; the README's model table is the computed one."""

import pathlib

import pytest

import lightnets
from lightnets import summary
from tests.reference import REFERENCE

README = pathlib.Path(__file__).parents[1] / "README.md"


@pytest.mark.parametrize("name", list(REFERENCE))
def test_parameters_and_macs_match_reference(name):
    reference, params, mmacs = REFERENCE[name]
    ours_params, ours_macs = summary.variant_counts(name)
    assert ours_params == params, f"{name}: {ours_params:,} parameters, {reference} has {params:,}"
    if mmacs is not None:
        assert ours_macs / 1e6 == pytest.approx(mmacs, rel=0.01), f"{name}: {ours_macs / 1e6:.1f} MMACs vs {mmacs}"


def test_readme_model_table_is_current():
    table = summary.model_table()
    assert table in README.read_text(), (
        "README.md's model table is out of date: paste the output of `python -m lightnets.summary`."
    )
    assert table.count("\n") == len(lightnets.list_models()) + 1
