# Creates the project virtualenv and installs the pinned dev tools listed in pyproject.toml.
# Run by `make .venv`; needs only a stock Python 3.11 (Debian's python3-venv is optional).

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPI_PIP_JSON = "https://pypi.org/pypi/pip/json"
STAMP_NAME = ".itb-installed"


class BootstrapError(Exception):
    """A failure to report to the user as one sentence."""


def dev_requirements():
    try:
        with open(ROOT / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["optional-dependencies"]["dev"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise BootstrapError(
            f"pyproject.toml has no readable [project.optional-dependencies] dev list ({exc})."
        ) from None


def stub_requirements():
    """{chip: [stub pin, stdlib stub pin]} from [tool.itb.stubs] (empty if there is none)."""
    try:
        with open(ROOT / "pyproject.toml", "rb") as f:
            table = tomllib.load(f).get("tool", {}).get("itb", {}).get("stubs", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BootstrapError(f"pyproject.toml could not be read ({exc}).") from None
    stdlib = table.get("stdlib")
    chips = {k: v for k, v in table.items() if k != "stdlib"}
    if chips and not stdlib:
        raise BootstrapError("[tool.itb.stubs] in pyproject.toml names no stdlib stub pin.")
    return {chip: [pin, stdlib] for chip, pin in sorted(chips.items())}


def venv_python(venv):
    return venv / "bin" / "python"


def _runs(cmd):
    try:
        return subprocess.run(cmd, capture_output=True).returncode == 0
    except OSError:
        return False


def _make_venv(venv, with_pip):
    cmd = [sys.executable, "-m", "venv", "--clear"]
    if not with_pip:
        cmd.append("--without-pip")
    # Output is captured so the expected ensurepip complaint on Debian does not look like a
    # failure; it is shown only if the fallback fails too.
    result = subprocess.run([*cmd, str(venv)], capture_output=True, text=True)
    return result.returncode == 0, result.stdout + result.stderr


def _install_pip_from_pypi(venv):
    # Same approach as pip's own docs for a pip-less interpreter: a wheel is a zip file with
    # pip's package at the top, so Python can run pip straight out of it to install itself.
    with urllib.request.urlopen(PYPI_PIP_JSON, timeout=60) as response:
        release = json.load(response)
        # Mirrors may answer with URLs relative to the JSON document; PyPI itself is absolute.
        base_url = response.geturl()
    wheels = [u for u in release["urls"] if u["packagetype"] == "bdist_wheel"]
    if not wheels:
        raise BootstrapError("PyPI lists no pip wheel for the latest release.")
    wheel = wheels[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / wheel["filename"]
        url = urllib.parse.urljoin(base_url, wheel["url"])
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
        if hashlib.sha256(data).hexdigest() != wheel["digests"]["sha256"]:
            raise BootstrapError("The pip wheel downloaded from PyPI failed its sha256 check.")
        path.write_bytes(data)
        subprocess.run(
            [str(venv_python(venv)), str(path / "pip"), "install", "--quiet", str(path)],
            check=True,
        )


def ensure_venv(venv):
    """Make sure `venv` holds a working interpreter with pip; create or repair it if not."""
    py = venv_python(venv)
    if _runs([str(py), "-m", "pip", "--version"]):
        return
    print(f"Creating virtualenv {venv} with {sys.executable}")
    ok, output = _make_venv(venv, with_pip=True)
    if ok:
        return
    # Debian ships ensurepip separately (python3-venv); without it `venv` fails, so build a
    # bare venv and fetch pip ourselves.
    print("python -m venv could not install pip (ensurepip missing?); fetching pip from PyPI")
    ok, bare_output = _make_venv(venv, with_pip=False)
    if not ok:
        sys.stderr.write(output + bare_output)
        raise BootstrapError(f"{sys.executable} could not create a virtualenv at {venv}.")
    try:
        _install_pip_from_pypi(venv)
    except (OSError, ValueError, KeyError, subprocess.CalledProcessError) as exc:
        raise BootstrapError(
            f"Could not install pip into {venv} ({exc}); install python3-venv "
            "(apt-get install python3-venv) or allow access to pypi.org."
        ) from None
    if not _runs([str(py), "-m", "pip", "--version"]):
        raise BootstrapError(f"pip was installed into {venv} but does not run.")


def install_requirements(venv, requirements):
    print("Installing pinned dev tools: " + " ".join(requirements))
    pip = [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check"]
    result = subprocess.run([*pip, "--quiet", *requirements])
    if result.returncode != 0:
        raise BootstrapError(
            f"pip could not install the pinned dev tools into {venv}; see pip's message above."
        )


def install_host_tools(venv):
    # The project itself, editable and without dependencies (they are the pins above): this
    # is what puts the `pumpctl` and `pumpbench` commands into the venv.
    print("Installing the host tools (pumpctl, pumpbench) from this checkout")
    result = subprocess.run(
        [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check",
         "--quiet", "--no-deps", "-e", str(ROOT)]
    )  # fmt: skip
    if result.returncode != 0:
        raise BootstrapError("pip could not install the host tools; see pip's message above.")


def install_stubs(venv, stubs):
    # Each chip's stub set is the same top-level modules (machine, esp32, time...), so each gets a
    # directory of its own; tools/typecheck.py points mypy at it. Rebuilt whole, so a changed pin
    # leaves no stale file behind.
    for chip, pins in stubs.items():
        target = venv / "stubs" / chip
        print(f"Installing MicroPython stubs for {chip}: " + " ".join(pins))
        shutil.rmtree(target, ignore_errors=True)
        result = subprocess.run(
            [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check",
             "--quiet", "--no-deps", "--target", str(target), *pins]
        )  # fmt: skip
        if result.returncode != 0:
            raise BootstrapError(
                f"pip could not install the {chip} stubs into {target}; see pip's message above."
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description="Create the virtualenv with the dev tools.")
    parser.add_argument("--venv", default=".venv", help="virtualenv directory (default .venv)")
    args = parser.parse_args(argv)
    venv = Path(args.venv)
    if not venv.is_absolute():
        venv = Path.cwd() / venv
    stamp = venv / STAMP_NAME
    try:
        requirements = dev_requirements()
        stubs = stub_requirements()
        ensure_venv(venv)
        install_requirements(venv, requirements)
        install_host_tools(venv)
        install_stubs(venv, stubs)
    except BootstrapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # The stamp is written last so that an interrupted install is retried by the next make.
    pins = requirements + [f"{chip}: {' '.join(p)}" for chip, p in stubs.items()]
    stamp.write_text("\n".join(pins) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
