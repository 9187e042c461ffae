"""run.json pins what a run's artifacts mean; only the fields that may change can change."""

from __future__ import annotations

from selfmoa.api import parse_run
from selfmoa.run.document import MUTABLE_FIELDS, fixed_fields_changed, run_document


def _run(**spec: object):
    base = {
        "policy": {"model": "m"},
        "judges": [
            {"name": "a", "objective": "safety"},
            {"name": "b", "objective": "helpfulness"},
        ],
    }
    return parse_run({"metadata": {"name": "r"}, "spec": {**base, **spec}})


def test_a_field_added_since_the_run_started_is_not_an_edit() -> None:
    run = _run()
    saved = run_document(run)
    for j in saved["spec"]["judges"]:  # a run.json written before these fields existed
        j.pop("minCoverage"), j.pop("format")
    assert fixed_fields_changed(saved, run) == []


def test_fixed_fields_are_named_and_mutable_ones_pass() -> None:
    saved = run_document(_run())
    assert fixed_fields_changed(saved, _run(policy={"model": "other"})) == ["policy"]
    assert fixed_fields_changed(saved, _run(iterations=9, suspend=True)) == []
    assert {"iterations", "stopWhen", "suspend", "serving", "trainer"} <= MUTABLE_FIELDS
