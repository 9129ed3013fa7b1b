# Runs each host_tests/scenarios/*.py under CPython and under MicroPython and compares the logs.
# CPython is the oracle: any byte of difference is an integer, ordering or formatting divergence.

from pathlib import Path

import pytest

from tools.mpy import read_req_ids, run_cpython, run_micropython

SCENARIOS = sorted(
    p for p in (Path(__file__).parent / "scenarios").glob("*.py") if not p.name.startswith("_")
)


def _params():
    return [
        pytest.param(path, id=path.stem, marks=[pytest.mark.req(*read_req_ids(path))])
        for path in SCENARIOS
    ]


def _first_difference(a, b):
    a_lines, b_lines = a.splitlines(), b.splitlines()
    for n in range(max(len(a_lines), len(b_lines))):
        left = a_lines[n] if n < len(a_lines) else "<end of output>"
        right = b_lines[n] if n < len(b_lines) else "<end of output>"
        if left != right:
            return n + 1, left, right
    # Same lines, so the bytes differ only in line endings or a missing final newline.
    return len(a_lines), "(line endings differ)", "(line endings differ)"


@pytest.mark.parametrize("scenario", _params())
def test_scenario_same_on_both_runtimes(scenario):
    c_code, c_out, c_err = run_cpython(scenario)
    m_code, m_out, m_err = run_micropython(scenario)
    assert c_code == 0, f"{scenario.name} failed under CPython (exit {c_code}):\n{c_err}"
    assert m_code == 0, f"{scenario.name} failed under MicroPython (exit {m_code}):\n{m_err}"
    assert c_out, f"{scenario.name} printed nothing under CPython"
    if c_out != m_out:
        line, cpy, mpy = _first_difference(c_out, m_out)
        pytest.fail(
            f"{scenario.name}: output differs first at line {line}\n"
            f"  CPython:     {cpy}\n  MicroPython: {mpy}",
            pytrace=False,
        )
