"""The soak test's entry point (`make soak`): a checkout mix at 80% of its
measured peak for 10 minutes against a local stack, with the writer running.

    python bench/soak.py [--minutes N] [--quick] [--update-readme]

Writes bench/results/soak.json, soak.md and soak.png. See bench/README.md, "Soak".
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from run import HERE, ROOT, _in_venv, _interrupt, ensure_requirements


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, help="how long the load runs (default 10; "
                   "1 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 minute, 5 s peak, 20 s warm-up, 2 s windows")
    p.add_argument("--share", type=float, default=0.8, help="share of the measured peak")
    p.add_argument("--rate", type=float, default=0.0,
                   help="requests/s to drive instead of a share of a measured peak")
    p.add_argument("--peak-seconds", type=float,
                   help="length of each of the two peak runs (default 15)")
    p.add_argument("--warmup", type=float,
                   help="seconds before memory is compared (default 120; a third of the run "
                        "at most)")
    p.add_argument("--interval", type=float, help="seconds per sample and latency window "
                   "(default 5)")
    p.add_argument("--think", type=float, default=1.0,
                   help="mean seconds between a user's steps (uniform, 0 to twice this)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip couponsvc verify (Redis against Postgres) after the run")
    p.add_argument("--out", default=str(HERE / "results"), help="where the results go")
    p.add_argument("--update-readme", action="store_true",
                   help="copy the figures into the Soak section of bench/README.md")
    p.add_argument("--keep", action="store_true", help="keep the scratch directories and logs")
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, short in (("minutes", 10.0, 1.0), ("peak_seconds", 15.0, 5.0),
                              ("warmup", 120.0, 20.0), ("interval", 5.0, 2.0)):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)
    if args.minutes <= 0 or not 0 < args.share <= 1.5 or args.interval <= 0:
        p.error("--minutes and --interval must be positive, --share in (0, 1.5]")
    return args


def main() -> int:
    _in_venv()
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse()
    ensure_requirements()
    subprocess.run([str(ROOT / "scripts" / "ensure-deps.sh")], check=True)
    sys.path.insert(0, str(HERE))
    from soakrun import run_soak

    started = time.monotonic()
    code = run_soak(args)
    print(f"soak finished in {time.monotonic() - started:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
