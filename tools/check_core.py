# Lint rule for firmware/: hardware modules only in firmware/hal/, and no CPython-only imports;
# board files import the hardware only inside functions, so their data imports on a host too.

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Only the HAL may touch the chip; everything else gets hardware objects injected.
HARDWARE = {"machine", "esp32", "bluetooth"}

# Absent from MicroPython (or too heavy for it), so an import would fail on the board even
# though every CPython test passes.
CPYTHON_ONLY = {
    "typing",
    "typing_extensions",
    "dataclasses",
    "enum",
    "abc",
    "pathlib",
    "logging",
    "fractions",
    "decimal",
    "functools",
    "itertools",
}


def _is_type_checking_guard(test):
    # Accepts `if TYPE_CHECKING:` and `if typing.TYPE_CHECKING:`; such blocks never run on the
    # board because firmware defines TYPE_CHECKING = False itself.
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(tree):
    """Yield (node, top-level module name, inside TYPE_CHECKING guard) for every import."""

    def visit(node, guarded):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name.split(".")[0], guarded
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node, node.module.split(".")[0], guarded
        if isinstance(node, ast.If) and _is_type_checking_guard(node.test):
            for child in node.body:
                yield from visit(child, True)
            for child in node.orelse:
                yield from visit(child, guarded)
            return
        for child in ast.iter_child_nodes(node):
            yield from visit(child, guarded)

    yield from visit(tree, False)


def check_file(path, root):
    """Return a list of 'file:line: message' problems for one firmware source file."""
    rel = path.relative_to(root).as_posix()
    in_hal = rel.startswith("firmware/hal/")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    except SyntaxError as exc:
        return [f"{rel}:{exc.lineno}: does not parse: {exc.msg}"]
    problems = []
    for node, module, guarded in _imports(tree):
        where = f"{rel}:{node.lineno}"
        if module in HARDWARE and not in_hal:
            problems.append(f"{where}: imports {module}; hardware access belongs in firmware/hal/")
        elif module in CPYTHON_ONLY and not guarded:
            problems.append(f"{where}: imports {module}, which MicroPython does not provide")
        elif module == "__future__" and any(a.name == "annotations" for a in node.names):
            problems.append(
                f"{where}: `from __future__ import annotations` is not supported by MicroPython"
            )
    return problems


def _module_level_imports(tree):
    """Imports that run when the module is imported: not those inside a function."""

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node, node.module.split(".")[0]
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    yield from visit(tree)


def check_board(path, root):
    """Problems in a boards/<name>/board.py: hardware (and the hardware layer, which needs it)
    imported at module level, which would stop tests and tools importing the board's data."""
    rel = path.relative_to(root).as_posix()
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    except SyntaxError as exc:
        return [f"{rel}:{exc.lineno}: does not parse: {exc.msg}"]
    return [
        f"{rel}:{node.lineno}: imports {module} at module level; import it inside make_hal()"
        for node, module in _module_level_imports(tree)
        if module in HARDWARE or module == "hal"
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check firmware/ imports for the board.")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    files = sorted((root / "firmware").rglob("*.py"))
    boards = sorted((root / "boards").glob("*/board.py"))
    problems = [p for f in files for p in check_file(f, root)]
    problems += [p for f in boards for p in check_board(f, root)]
    for problem in problems:
        print(problem)
    if problems:
        print(f"check_core: {len(problems)} forbidden import(s) in firmware/ or boards/",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"check_core: {len(files)} firmware file(s) and {len(boards)} board file(s) OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
