# Runs each host_tests/mpy/test_*.py under the real MicroPython interpreter as one pytest test.
# A script passes by exiting 0 with `OK` as its last line; a last line `SKIP` skips it.

from pathlib import Path

import pytest

from tools.mpy import read_req_ids, run_micropython

SCRIPTS = sorted((Path(__file__).parent / "mpy").glob("test_*.py"))


def _params():
    # Requirement ids become real markers at collection time, so the trace sees them exactly as
    # it sees @pytest.mark.req on ordinary tests.
    return [
        pytest.param(path, id=path.stem, marks=[pytest.mark.req(*read_req_ids(path))])
        for path in SCRIPTS
    ]


def _tail(text, lines=40):
    return "\n".join(text.rstrip().splitlines()[-lines:])


@pytest.mark.parametrize("script", _params())
def test_micropython_script(script):
    code, out, err = run_micropython(script)
    lines = out.rstrip().splitlines()
    last = lines[-1].strip() if lines else ""
    if code == 0 and last == "SKIP":
        pytest.skip(f"{script.name} printed SKIP")
    assert code == 0 and last == "OK", (
        f"{script.name} under MicroPython: exit {code}, last line {last!r}\n"
        f"--- stdout (tail) ---\n{_tail(out)}\n--- stderr (tail) ---\n{_tail(err)}"
    )
