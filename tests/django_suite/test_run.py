"""dev.py django-tests: how it reads runtests.py's output and compares the runs. No server."""

from __future__ import annotations

from pathlib import Path

from tests.django_suite.run import Result, ours_alone, parse, read_exceptions, report

OUTPUT = """\
Found 12 test(s).
..F.E.s
======================================================================
ERROR: test_signal (backends.tests.ConnectionCreatedSignalTest.test_signal)
----------------------------------------------------------------------
Traceback (most recent call last):
======================================================================
FAIL: test_connect_role (backends.postgresql.tests.Tests)
----------------------------------------------------------------------
======================================================================
FAIL: test_bypass (backends.postgresql.tests.Tests.test_bypass) [<object>] (wrapper=1)
======================================================================
ERROR: setUpClass (servers.tests.LiveServerViews)
----------------------------------------------------------------------
Ran 12 tests in 3.250s

FAILED (failures=2, errors=2, skipped=1)
"""


def _result(tmp_path: Path, text: str, returncode: int = 1) -> Result:
    log = tmp_path / "run.log"
    log.write_text(text)
    return parse("ours", log, returncode, 1.0)


def test_parse_reads_both_python_formats_subtests_and_class_fixtures(tmp_path):
    result = _result(tmp_path, OUTPUT)

    assert (result.ran, result.skipped) == (12, 1)
    assert result.problems == {
        "backends.tests.ConnectionCreatedSignalTest.test_signal": "ERROR",
        "backends.postgresql.tests.Tests.test_connect_role": "FAIL",
        "backends.postgresql.tests.Tests.test_bypass": "FAIL",
        "servers.tests.LiveServerViews.setUpClass": "ERROR",
    }


def test_a_run_that_failed_without_a_readable_failure_did_not_complete(tmp_path):
    assert not _result(tmp_path, "Ran 3 tests in 1s\n\nOK\n", returncode=1).completed
    assert not _result(tmp_path, "Traceback ...\n", returncode=1).completed
    assert _result(tmp_path, "Ran 3 tests in 1s\n\nOK\n", returncode=0).completed


def test_only_failures_of_ours_alone_not_excepted_fail_the_command(tmp_path, capsys):
    ours = _result(tmp_path, OUTPUT)
    stock = Result("stock", 1, 1.0, tmp_path / "stock.log", ran=12)
    stock.problems = {"backends.postgresql.tests.Tests.test_bypass": "FAIL"}
    results = {"ours": ours, "stock": stock}
    exceptions = {"servers.tests.LiveServerViews.setUpClass": "a reason"}

    # A class fixture cannot be run again alone; the others are.
    assert ours_alone(results, exceptions) == {
        "backends.tests.ConnectionCreatedSignalTest.test_signal",
        "backends.postgresql.tests.Tests.test_connect_role",
    }
    assert report(results, exceptions) == 1
    ours.passed_on_rerun = {
        "backends.tests.ConnectionCreatedSignalTest.test_signal",
        "backends.postgresql.tests.Tests.test_connect_role",
    }
    assert report(results, exceptions) == 0
    assert "failing with the pooled backend alone: 3" in capsys.readouterr().out


def test_exceptions_file_is_test_id_colon_reason_with_comments(tmp_path):
    path = tmp_path / "exceptions.txt"
    path.write_text("# why\n\na.tests.T.test_x: better for users  # note\n")

    assert read_exceptions(path) == {"a.tests.T.test_x": "better for users"}


def test_the_shipped_exceptions_file_is_empty():
    assert read_exceptions(Path(__file__).with_name("exceptions.txt")) == {}


def test_failures_of_machine_timed_tests_are_shown_not_counted(tmp_path, capsys):
    test_id = "serializers.test_xml.XmlSerializerTestCase.test_crafted_xml_performance"
    ours = Result("ours", 1, 1.0, tmp_path / "ours.log", ran=1)
    ours.problems = {test_id: "FAIL"}
    stock = Result("stock", 0, 1.0, tmp_path / "stock.log", ran=1)
    results = {"ours": ours, "stock": stock}

    assert ours_alone(results, {}) == set()
    assert report(results, {}) == 0
    assert "not counted" in capsys.readouterr().out
