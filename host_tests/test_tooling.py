# Tests of the build/test tooling itself: requirement trace under xdist, trace report,
# firmware import rules, mpy-cross build and `# req:` header parsing.

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tools import check_core, mpy_build, trace
from tools.mpy import read_req_ids

HOST_TESTS = Path(__file__).resolve().parent

_SAMPLE_TESTS = """
import pytest

pytestmark = pytest.mark.req("SR-02")


@pytest.mark.req("SR-01")
def test_pass():
    pass


@pytest.mark.req("SR-03")
def test_fail():
    assert False


@pytest.mark.req("SR-04")
def test_skip():
    pytest.skip("not today")


@pytest.mark.req("SR-05")
@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    pass


@pytest.fixture
def broken():
    raise RuntimeError("setup fails")


@pytest.mark.req("SR-06")
def test_error(broken):
    pass


def test_dynamic(request):
    request.node.add_marker(pytest.mark.req("SR-07"))
"""

_SAMPLE_PYPROJECT = """
[tool.pytest.ini_options]
testpaths = ["host_tests"]
addopts = ["--strict-markers", "-p", "no:cacheprovider"]
markers = ["req(*ids): safety requirement(s) this test demonstrates"]
"""


def _sample_project(tmp_path):
    # A throwaway repo with the real conftest, so its trace lands in tmp_path/build/.
    (tmp_path / "host_tests").mkdir()
    shutil.copy(HOST_TESTS / "conftest.py", tmp_path / "host_tests" / "conftest.py")
    (tmp_path / "host_tests" / "test_sample.py").write_text(_SAMPLE_TESTS)
    (tmp_path / "pyproject.toml").write_text(_SAMPLE_PYPROJECT)
    return tmp_path / "build" / "trace.json"


def _pytest(cwd, *args):
    cmd = [sys.executable, "-m", "pytest", "-q", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_trace_collects_req_ids_and_outcomes_from_xdist_workers(tmp_path):
    trace_file = _sample_project(tmp_path)
    run = _pytest(tmp_path, "-n", "2")
    assert run.returncode == 1, run.stdout + run.stderr
    data = json.loads(trace_file.read_text())
    got = {t["nodeid"].split("::")[1]: (t["outcome"], t["req"]) for t in data["tests"]}
    assert got == {
        "test_pass": ("passed", ["SR-01", "SR-02"]),
        "test_fail": ("failed", ["SR-02", "SR-03"]),
        "test_skip": ("skipped", ["SR-02", "SR-04"]),
        "test_param[1]": ("passed", ["SR-02", "SR-05"]),
        "test_param[2]": ("passed", ["SR-02", "SR-05"]),
        "test_error": ("failed", ["SR-02", "SR-06"]),
        "test_dynamic": ("passed", ["SR-02", "SR-07"]),
    }
    assert data["pytest_exit_status"] == 1


def _stand_in_trace(trace_file):
    # Stands for the result of an earlier full run.
    trace_file.parent.mkdir()
    trace_file.write_text('{"tests": []}')


def test_narrowed_run_leaves_the_full_trace_alone(tmp_path):
    trace_file = _sample_project(tmp_path)
    _stand_in_trace(trace_file)
    run = _pytest(tmp_path, "-p", "no:xdist", "-k", "test_pass")
    assert run.returncode == 0, run.stdout + run.stderr
    assert trace_file.read_text() == '{"tests": []}'


def test_interrupted_run_removes_the_stale_trace(tmp_path):
    trace_file = _sample_project(tmp_path)
    _stand_in_trace(trace_file)
    (tmp_path / "host_tests" / "test_broken.py").write_text("this is not python\n")
    run = _pytest(tmp_path, "-p", "no:xdist")
    assert run.returncode == 2
    assert not trace_file.exists()


def _write_trace(path, tests):
    path.write_text(json.dumps({"tests": tests}))


def test_trace_report_lists_unproven_and_unknown_requirements(tmp_path, capsys):
    doc = tmp_path / "reqs.md"
    doc.write_text("# R\n\n### SR-01: First\ntext\n### SR-02: Second\n### SR-100: Third\n")
    results = tmp_path / "trace.json"
    _write_trace(
        results,
        [
            {"nodeid": "t.py::a", "req": ["SR-01"], "outcome": "passed"},
            {"nodeid": "t.py::b", "req": ["SR-02"], "outcome": "failed"},
        ],
    )
    assert trace.main(["--doc", str(doc), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "SR-100  Third\n        (no tests)" in out
    no_pass = out.split("Requirements with no passing test:")[1]
    assert "SR-02" in no_pass and "SR-100" in no_pass and "SR-01" not in no_pass

    _write_trace(results, [{"nodeid": "t.py::c", "req": ["SR-09"], "outcome": "passed"}])
    assert trace.main(["--doc", str(doc), "--results", str(results)]) == 1
    assert "SR-09  t.py::c" in capsys.readouterr().out


def test_trace_report_without_results_says_so_in_one_line(tmp_path, capsys):
    doc = tmp_path / "reqs.md"
    doc.write_text("### SR-01: First\n")
    assert trace.main(["--doc", str(doc), "--results", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trace: no test results") and "\n" not in err


def test_check_core_rules(tmp_path):
    core = tmp_path / "firmware" / "pump"
    hal = tmp_path / "firmware" / "hal"
    core.mkdir(parents=True)
    hal.mkdir()
    (hal / "esp32.py").write_text("import machine\nimport esp32\n")
    (core / "ok.py").write_text(
        "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from typing import Any\nimport struct\n"
    )
    (core / "bad.py").write_text(
        "from __future__ import annotations\n"
        "from machine import Pin\n"
        "import bluetooth as bt\n"
        "def f():\n    import functools\n"
        "from dataclasses import dataclass\n"
    )
    assert check_core.check_file(hal / "esp32.py", tmp_path) == []
    assert check_core.check_file(core / "ok.py", tmp_path) == []
    lines = [p.split(": ")[0] for p in check_core.check_file(core / "bad.py", tmp_path)]
    assert lines == [f"firmware/pump/bad.py:{n}" for n in (1, 2, 3, 5, 6)]
    assert check_core.main(["--root", str(tmp_path)]) == 1


def test_mpy_build_mirrors_paths_and_names_a_rejected_file(tmp_path, capsys):
    (tmp_path / "firmware" / "pump").mkdir(parents=True)
    (tmp_path / "boards" / "sim").mkdir(parents=True)
    (tmp_path / "firmware" / "pump" / "a.py").write_text("X = 1\n")
    (tmp_path / "boards" / "sim" / "board.py").write_text("Y = 2\n")
    assert mpy_build.main(["--root", str(tmp_path)]) == 0
    assert (tmp_path / "build/mpy/firmware/pump/a.mpy").is_file()
    assert (tmp_path / "build/mpy/boards/sim/board.mpy").is_file()
    assert "bytes in total" in capsys.readouterr().out

    # `match` is CPython syntax that MicroPython does not have.
    (tmp_path / "firmware" / "pump" / "b.py").write_text(
        "x = 1\nmatch x:\n    case 1:\n        pass\n"
    )
    assert mpy_build.main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mpy: mpy-cross rejected firmware/pump/b.py:2:") and "\n" not in err


def test_req_header_parsing(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("# What this is for.\n# req: SR-11, SR-33 SR-11\n\nimport x\n# req: SR-99\n")
    assert read_req_ids(script) == ["SR-11", "SR-33"]
