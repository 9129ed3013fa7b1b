# Prints the safety-requirement trace: each SR in docs/safety-requirements.md and its tests.
# Input is build/trace.json from the last full pytest run; exit 1 if a test names an unknown id.

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "safety-requirements.md"
RESULTS = ROOT / "build" / "trace.json"

_HEADING = re.compile(r"^###\s+(SR-\d{2,})\s*:\s*(.+?)\s*$")
_SHORT = {"passed": "pass", "failed": "FAIL", "skipped": "skip"}


class TraceError(Exception):
    """Missing or unreadable input, reported as one sentence."""


def read_requirements(path):
    """Ordered {id: title} from `### SR-NN: title` headings."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        raise TraceError(f"cannot read {path}.") from None
    reqs = {}
    for line in text.splitlines():
        match = _HEADING.match(line)
        if match:
            reqs.setdefault(match.group(1), match.group(2))
    if not reqs:
        raise TraceError(f"{path} has no '### SR-NN: title' headings.")
    return reqs


def read_results(path):
    bad = TraceError(f"{path} is not a trace file written by host_tests/conftest.py.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TraceError(
            f"no test results at {path}; the last full test run did not finish (run `make test`)."
        ) from None
    except (OSError, ValueError):
        raise bad from None
    if not isinstance(data, dict) or not isinstance(data.get("tests"), list):
        raise bad
    return data


def build_matrix(reqs, tests):
    """Return ({req id: [(outcome, nodeid)]}, {unknown id: [nodeid]})."""
    by_req = {rid: [] for rid in reqs}
    unknown = {}
    for test in tests:
        for rid in test["req"]:
            if rid in by_req:
                by_req[rid].append((test["outcome"], test["nodeid"]))
            else:
                unknown.setdefault(rid, []).append(test["nodeid"])
    return by_req, unknown


def render(reqs, data, by_req, unknown, out):
    tests = data["tests"]
    named = sum(1 for t in tests if t["req"])
    out.write(
        f"Safety requirement trace: {len(reqs)} requirements, {len(tests)} tests "
        f"({named} naming a requirement)\n"
        f"Results: {data.get('generated', '?')}, hypothesis profile "
        f"{data.get('hypothesis_profile', '?')}, pytest exit status "
        f"{data.get('pytest_exit_status', '?')}\n\n"
    )
    for rid, title in reqs.items():
        out.write(f"{rid}  {title}\n")
        if not by_req[rid]:
            out.write("        (no tests)\n")
        for outcome, nodeid in sorted(by_req[rid], key=lambda r: r[1]):
            out.write(f"        {_SHORT.get(outcome, outcome):4}  {nodeid}\n")

    missing = [rid for rid in reqs if not any(o == "passed" for o, _ in by_req[rid])]
    out.write("\nRequirements with no passing test:\n")
    if not missing:
        out.write("  none\n")
    for rid in missing:
        out.write(f"  {rid}  {reqs[rid]}\n")

    if unknown:
        out.write("\nTests naming requirement ids not in docs/safety-requirements.md:\n")
        for rid in sorted(unknown):
            for nodeid in unknown[rid]:
                out.write(f"  {rid}  {nodeid}\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Print the requirement/test trace matrix.")
    parser.add_argument("--doc", type=Path, default=DOC, help="safety requirements markdown")
    parser.add_argument("--results", type=Path, default=RESULTS, help="trace.json from pytest")
    args = parser.parse_args(argv)
    try:
        reqs = read_requirements(args.doc)
        data = read_results(args.results)
    except TraceError as exc:
        print(f"trace: {exc}", file=sys.stderr)
        return 2
    by_req, unknown = build_matrix(reqs, data["tests"])
    render(reqs, data, by_req, unknown, sys.stdout)
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main())
