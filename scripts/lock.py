#!/usr/bin/env python3
"""Makes the lock files in requirements/, or checks that they are current.

    make lock                                  # scripts/lock.py, with the pinned uv of .tools/
    make lock LOCK_ARGS=--upgrade              # every package at its newest allowed version
    make lock LOCK_ARGS="--upgrade-package starlette"
    make lock-check                            # scripts/lock.py --check, offline (make check)

Every lock pins each package to one version with the sha256 of each of its
files on the index, for CPython 3.11 on x86_64 Linux (these machines, CI and
python:3.11-slim-trixie). Without LOCK_ARGS, uv keeps the versions already
pinned wherever they still satisfy the inputs.

    dev.lock      the whole .venv: [project].dependencies, the dev extra,
                  pulumi/requirements.txt, bench/requirements.txt, build.in
    runtime.lock  [project].dependencies alone, at dev.lock's versions (the image)
    build.lock    build.in at dev.lock's versions: pip and the build backends
    pulumi.lock   pulumi/requirements.txt at dev.lock's versions: pulumi/venv in the
                  deploy jobs (.github/actions/pulumi-stack)
    tools.lock    tools.in: uv and pip-audit, for .tools/ (make lock, make audit)

Each lock's header records a digest of its inputs: the dependency tables of
pyproject.toml (not the rest of it, so a ruff setting does not stale the
locks), the requirement lines of the files above, and the uv options below.
--check recomputes it and fails when the two differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = "requirements"
BUILD_IN = f"{LOCK_DIR}/build.in"

# The options every lock is made with (part of the digest).
UV_OPTIONS = [
    "--generate-hashes",
    "--python-version", "3.11",
    "--python-platform", "x86_64-unknown-linux-gnu",
    "--custom-compile-command", "make lock",
]

# Each lock and the inputs uv compiles it from, in the order they are made:
# dev.lock first, since the others are constrained to its versions.
LOCKS: dict[str, list[str]] = {
    "dev.lock": [
        "pyproject.toml", "--extra", "dev",
        "pulumi/requirements.txt", "bench/requirements.txt", BUILD_IN,
    ],
    "runtime.lock": ["pyproject.toml", "--constraint", f"{LOCK_DIR}/dev.lock"],
    "build.lock": [BUILD_IN, "--constraint", f"{LOCK_DIR}/dev.lock"],
    "pulumi.lock": ["pulumi/requirements.txt", "--constraint", f"{LOCK_DIR}/dev.lock"],
    "tools.lock": [f"{LOCK_DIR}/tools.in"],
}

# The requirement files read by some lock (their comments and blank lines are
# left out of the digest).
REQUIREMENT_FILES = sorted(
    {arg for args in LOCKS.values() for arg in args
     if arg.endswith((".in", ".txt")) and not arg.endswith(".lock")}
)

DIGEST_PREFIX = "# inputs digest (scripts/lock.py --check): sha256:"
DIGEST_LINE = re.compile(re.escape(DIGEST_PREFIX) + r"([0-9a-f]{64})$", re.MULTILINE)


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def inputs_digest() -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    inputs = {
        "uv-options": UV_OPTIONS,
        "locks": LOCKS,
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "build-system": pyproject.get("build-system", {}).get("requires", []),
        "files": {name: requirement_lines(ROOT / name) for name in REQUIREMENT_FILES},
    }
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def missing_build_requirements() -> list[str]:
    """[build-system].requires entries that build.in does not list."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = pyproject.get("build-system", {}).get("requires", [])
    listed = {line.replace(" ", "") for line in requirement_lines(ROOT / BUILD_IN)}
    return [req for req in wanted if req.replace(" ", "") not in listed]


def check() -> int:
    problems = [
        f"{BUILD_IN} lacks {req!r} from [build-system].requires"
        for req in missing_build_requirements()
    ]
    digest = inputs_digest()
    stale = []
    for name in LOCKS:
        path = ROOT / LOCK_DIR / name
        if not path.is_file():
            problems.append(f"{LOCK_DIR}/{name} is missing")
            continue
        found = DIGEST_LINE.search(path.read_text())
        if found is None:
            problems.append(f"{LOCK_DIR}/{name} has no inputs digest")
        elif found.group(1) != digest:
            stale.append(name)
    if stale:
        problems.append(
            f"stale in {LOCK_DIR}/: {', '.join(stale)}; the dependencies in pyproject.toml "
            f"or {', '.join(REQUIREMENT_FILES)} changed since they were made"
        )
    for problem in problems:
        print(f"lock-check: {problem}", file=sys.stderr)
    if problems:
        print("lock-check: run `make lock` and commit requirements/", file=sys.stderr)
        return 1
    print(f"lock-check: {len(LOCKS)} locks in {LOCK_DIR}/ match their inputs")
    return 0


def find_uv() -> str:
    """The uv installed next to this interpreter (.tools/bin/uv under make lock)."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file():
        return str(beside)
    found = shutil.which("uv")
    if found is None:
        sys.exit("lock: uv not found; run `make lock`, which installs the pinned uv in .tools/")
    return found


def lock(uv_args: list[str]) -> int:
    missing = missing_build_requirements()
    if missing:
        sys.exit(f"lock: add {', '.join(missing)} to {BUILD_IN} ([build-system].requires)")
    uv = find_uv()
    version = subprocess.run([uv, "--version"], check=True, capture_output=True, text=True)
    print(f"lock: {version.stdout.strip()}", flush=True)
    digest = inputs_digest()
    for name, inputs in LOCKS.items():
        output = f"{LOCK_DIR}/{name}"
        print(f"lock: {output}", flush=True)
        command = [uv, "pip", "compile", "--quiet", *UV_OPTIONS, *inputs, *uv_args,
                   "--output-file", output]
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            print(f"lock: uv failed on {output}", file=sys.stderr)
            return 1
        add_digest(ROOT / output, digest)
    return check()


def add_digest(path: Path, digest: str) -> None:
    """Puts the digest line after uv's header (the comment lines at the top)."""
    lines = [line for line in path.read_text().splitlines() if not DIGEST_LINE.match(line)]
    header = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    lines.insert(header, DIGEST_PREFIX + digest)
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true",
                        help="fail when a lock does not match its inputs (offline)")
    args, uv_args = parser.parse_known_args()
    if args.check:
        if uv_args:
            parser.error(f"--check takes no uv options: {' '.join(uv_args)}")
        return check()
    return lock(uv_args)


if __name__ == "__main__":
    sys.exit(main())
