# syntax=docker/dockerfile:1
# The Coupon Book Service image: `couponsvc serve` by default; the same image
# runs `couponsvc migrate` and `couponsvc writer` (see compose.yaml).
# Checked offline by scripts/check-deploy.sh (hadolint).

# ---- builder: a virtualenv with the dependencies, then the package ----------
FROM python:3.11-slim-trixie AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Every Python package comes from a lock made by `make lock` (requirements/):
# each file is checked against its sha256 (--require-hashes), nothing is
# resolved here (--no-deps) and nothing is built from a source distribution
# (--only-binary), so no code from the index runs during the build.
#
# Build tools: pip and hatchling (requirements/build.lock), in a virtualenv of
# their own that never reaches the final stage. The service's virtualenv has no
# pip at all: this pip installs into it (pip --python).
COPY requirements/build.lock requirements/
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/build \
    && /opt/build/bin/python -m pip install --require-hashes --no-deps --only-binary :all: \
        --requirement requirements/build.lock \
    && python -m venv --without-pip /opt/venv

# Dependency layer: rebuilt only when requirements/runtime.lock changes; it pins
# [project].dependencies and everything they need, at the versions the tests ran.
# Every dependency ships manylinux wheels, so no compiler is needed either.
COPY requirements/runtime.lock requirements/
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/build/bin/pip --python /opt/venv/bin/python install \
        --require-hashes --no-deps --only-binary :all: \
        --requirement requirements/runtime.lock

# Code layer: the package itself, built into a wheel by the locked hatchling
# (--no-build-isolation: no build backend fetched unchecked; the wheel also
# carries lua/ as couponsvc/lua and the SQL migrations), then installed alone.
COPY pyproject.toml README.md ./
COPY lua/ lua/
COPY src/ src/
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-deps /tmp/dist/couponsvc-*.whl \
    && /opt/venv/bin/couponsvc --help > /dev/null

# ---- runtime: the virtualenv only; no compiler, no build tools, not root -----
FROM python:3.11-slim-trixie

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    COUPONSVC_HOST=0.0.0.0 \
    COUPONSVC_PORT=8000

RUN groupadd --system --gid 10001 couponsvc \
    && useradd --system --uid 10001 --gid 10001 --no-log-init --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin couponsvc

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
EXPOSE 8000

# Liveness of the API (no I/O behind /healthz). Python, since slim has no curl;
# urlopen raises on a refused connection or a non-2xx status, so exit 1.
# The writer and migrate containers override or disable this (compose.yaml).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('COUPONSVC_PORT', '8000'), timeout=2)"]

ENTRYPOINT ["couponsvc"]
CMD ["serve"]
