# syntax=docker/dockerfile:1
# The Coupon Book Service image: `couponsvc serve` by default; the same image
# runs `couponsvc migrate` and `couponsvc writer` (see compose.yaml).
# Checked offline by scripts/check-deploy.sh (hadolint).

# ---- builder: a virtualenv with the dependencies, then the package ----------
FROM python:3.11-slim-trixie AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
RUN python -m venv /opt/venv

# Dependency layer: rebuilt only when pyproject.toml changes. The runtime
# dependencies are read from [project].dependencies, so no code is needed yet.
# Every dependency ships manylinux wheels, so no compiler is needed either.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt

# Code layer: the package itself, built by hatchling into a wheel (which also
# carries lua/ as couponsvc/lua and the SQL migrations) and installed alone.
COPY README.md ./
COPY lua/ lua/
COPY src/ src/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
    && couponsvc --help > /dev/null

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
