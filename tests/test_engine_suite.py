"""The exported entry that runs the data-path suite against a named engine."""

from __future__ import annotations

import pytest

from lmcache_core.testing.engine_suite import SUITE_ENV, data_path_suite, run_data_path_suite

SELECTION_TEST = "test_engine_selection.py"


def test_the_suite_is_found_next_to_the_editable_core() -> None:
    suite = data_path_suite()
    assert (suite / "conftest.py").is_file()
    assert (suite / SELECTION_TEST).is_file()


def test_a_missing_suite_is_reported_with_the_variable_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv(SUITE_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=SUITE_ENV):
        data_path_suite()


@pytest.mark.slow
def test_runs_the_suite_against_the_named_engine() -> None:
    args = ("-q", "-k", "selected_engine")
    assert run_data_path_suite("default", *args, timeout=300) == 0
    # An engine nobody installed: every server refuses to start, so the run fails.
    assert run_data_path_suite("no_such_engine", *args, timeout=300) != 0
