"""The benchmark suite's entry point (`make bench`).

    python bench/run.py [--quick]                 # starts its own servers
    python bench/run.py --url URL --token TOKEN   # an existing deployment

Writes bench/results/latest.json, latest.md and the plots. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def _in_venv() -> None:
    """Re-runs this script with the project's venv, which has couponsvc."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and VENV_PYTHON.exists():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])


def ensure_requirements() -> None:
    try:
        import asyncpg  # noqa: F401
        import httpx  # noqa: F401
        import matplotlib  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        # bench/requirements.txt is locked into requirements/dev.lock, so the
        # project's venv gets it, hash-checked, from `make venv`.
        if Path(sys.prefix).resolve() == (ROOT / ".venv").resolve():
            raise SystemExit("bench/requirements.txt is not in .venv: run `make venv`") from None
        print("bench/requirements.txt is missing here: make venv", flush=True)
        subprocess.run(["make", "-C", str(ROOT), "venv"], check=True)
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])


def ensure_tools(local: bool) -> None:
    """wrk and hey from Debian's packages; the servers through scripts/ensure-deps.sh."""
    missing = [tool for tool in ("wrk", "hey") if shutil.which(tool) is None]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"missing {' '.join(missing)}: apt-get install {' '.join(missing)}")
        print(f"installing {' '.join(missing)} from Debian's packages", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    if local:
        subprocess.run([str(ROOT / "scripts" / "ensure-deps.sh")], check=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="benchmark this running service instead of starting one")
    p.add_argument("--token", default=os.environ.get("COUPONSVC_TOKEN", ""),
                   help="bearer token with coupons:admin and coupons:write "
                        "(default $COUPONSVC_TOKEN); needed with --url")
    p.add_argument("--quick", action="store_true",
                   help="100,000 codes and 5 s phases (about 5 minutes)")
    p.add_argument("--out", default=str(HERE / "results"), help="where the results go")
    p.add_argument("--update-readme", action="store_true",
                   help="copy the figures into bench/README.md")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory and logs")
    args = p.parse_args(argv)
    if args.url and not args.token:
        p.error("--url needs --token (or COUPONSVC_TOKEN)")
    return args


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so every server is stopped on the way out


def main() -> int:
    _in_venv()
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse()
    ensure_requirements()
    ensure_tools(local=not args.url)
    sys.path.insert(0, str(HERE))
    from suite import run_suite

    started = time.monotonic()
    code = run_suite(args)
    print(f"benchmark finished in {time.monotonic() - started:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
