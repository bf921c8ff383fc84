"""The `couponsvc` command: serve the API, or print a token for local use."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from couponsvc.settings import Settings, SettingsError


def _serve(settings: Settings, _: argparse.Namespace) -> int:
    import uvicorn

    from couponsvc.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from couponsvc.auth import issue_token

    print(issue_token(settings, args.sub, args.scope, args.ttl))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="couponsvc", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.set_defaults(run=_serve)
    token = commands.add_parser("token", help="print a signed bearer token (HS256 secret)")
    token.add_argument("--sub", required=True, help="the subject: a user id or a client name")
    token.add_argument("--scope", default="",
                       help='space-separated scopes, e.g. "coupons:admin coupons:write"')
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.set_defaults(run=_token)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"couponsvc: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(args.run(settings, args))
