# Shared pytest setup: hypothesis profiles, and the requirement trace written to build/trace.json.
# `make trace` turns that file into the requirement/test matrix (tools/trace.py).

import datetime
import json
import os
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
TRACE_FILE = ROOT / "build" / "trace.json"

# Scripts under mpy/ and scenarios/ are run in subprocesses by test_micropython.py and
# test_scenarios_both.py; pytest must not import them as CPython test modules.
collect_ignore = ["mpy", "scenarios"]

# ci: reproducible and bounded, so a red CI run replays identically on a laptop.
settings.register_profile(
    "ci", derandomize=True, max_examples=100, deadline=None, print_blob=True, database=None
)
# long: fresh random examples on every run, for soak runs (`make test-long`).
settings.register_profile("long", max_examples=5000, deadline=None, print_blob=True)
PROFILES = ("ci", "long")


def _profile_name():
    return os.environ.get("HYPOTHESIS_PROFILE", "ci")


def pytest_configure(config):
    name = _profile_name()
    if name not in PROFILES:
        choices = ", ".join(PROFILES)
        raise pytest.UsageError(f"HYPOTHESIS_PROFILE must be one of {choices}, not {name!r}.")
    settings.load_profile(name)
    # Under xdist only the controller sees every report; workers just attach the ids.
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(TraceRecorder(config), "itb-trace-recorder")


def pytest_report_header(config):
    return "hypothesis profile: " + _profile_name()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # Runs in the process that ran the test (a worker under xdist). The marker objects stay
    # there, but user_properties is serialised with the report, so the ids reach the controller.
    report = yield
    ids = []
    for marker in item.iter_markers("req"):
        ids.extend(str(rid) for rid in marker.args)
    report.user_properties.append(("req", ids))
    return report


class TraceRecorder:
    """Collects (nodeid, req ids, outcome) from reports and writes build/trace.json."""

    def __init__(self, config):
        self.config = config
        self.tests = {}

    def pytest_runtest_logreport(self, report):
        entry = self.tests.setdefault(report.nodeid, {"req": set(), "phases": {}})
        for key, value in report.user_properties:
            if key == "req":
                entry["req"].update(value)
        if report.passed:
            phase = "passed"
        elif report.skipped:
            # xfail lands here too: an expected failure is no evidence that a requirement holds.
            phase = "skipped"
        else:
            phase = "failed"
        entry["phases"][report.when] = phase

    def _narrowed(self):
        # Only a run over the whole suite may stand for "the trace"; `-k`, `-m`, `--lf` or
        # explicit paths would silently drop tests from the matrix.
        opt = self.config.option
        return (
            self.config.args_source != pytest.Config.ArgsSource.TESTPATHS
            or bool(getattr(opt, "keyword", ""))
            or bool(getattr(opt, "markexpr", ""))
            or bool(getattr(opt, "lf", False))
            or bool(getattr(opt, "stepwise", False))
            or bool(getattr(opt, "deselect", None))
            or bool(getattr(opt, "ignore", None))
            or bool(getattr(opt, "ignore_glob", None))
        )

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if self._narrowed():
            return
        if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            # Interrupted, collection error or crash: results are incomplete, and an older file
            # would be mistaken for the current state, so remove it.
            TRACE_FILE.unlink(missing_ok=True)
            return
        data = {
            "generated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "hypothesis_profile": _profile_name(),
            "pytest_exit_status": int(exitstatus),
            "tests": [
                {"nodeid": nodeid, "req": sorted(e["req"]), "outcome": _outcome(e["phases"])}
                for nodeid, e in sorted(self.tests.items())
            ],
        }
        TRACE_FILE.parent.mkdir(parents=True, exist_ok=True)
        # Written beside and renamed, so a reader never sees half a file.
        tmp = TRACE_FILE.with_name(TRACE_FILE.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, TRACE_FILE)


def _outcome(phases):
    # Any failing phase (an error in setup or teardown included) fails the test; a skip in
    # setup or call skips it; otherwise it passed only if its call phase actually ran.
    if "failed" in phases.values():
        return "failed"
    if "skipped" in phases.values():
        return "skipped"
    return "passed" if phases.get("call") == "passed" else "failed"
