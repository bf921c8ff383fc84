"""The operator commands as an operator runs them: `couponsvc rebuild|verify|inspect`."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Cli, Scenario, Service, cli_environment

pytestmark = pytest.mark.integration

CONSOLE_SCRIPT = Path(sys.executable).parent / "couponsvc"


async def console(service: Service, *argv: str,
                  **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUPONSVC_")}
    env.update(cli_environment(service), **settings)
    return await asyncio.to_thread(subprocess.run, [str(CONSOLE_SCRIPT), *argv], env=env,
                                   capture_output=True, text=True, timeout=60)


async def test_the_console_script_runs_every_command(service: Service,
                                                     scenario: Scenario) -> None:
    await service.redis.flushdb()

    rebuilt = await console(service, "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.startswith("rebuilt 2 book(s), 15 code(s), 5 assigned, in ")

    verified = await console(service, "verify")
    assert (verified.returncode, verified.stdout) == (0, ""), verified.stderr

    shown = await console(service, "inspect", scenario.twice)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"code {scenario.twice} ")

    book = await console(service, "inspect", "--book", scenario.single)
    assert book.returncode == 0, book.stderr
    assert book.stdout.startswith(f"book 1 ({scenario.single})")


async def test_the_commands_in_process(service: Service, scenario: Scenario,
                                       cli_run: Cli) -> None:
    code = await cli_run("inspect", scenario.once)
    assert code.status == 0
    assert "dave" in code.out and "redeemed" in code.out

    book = await cli_run("inspect", "--book", scenario.multi)
    assert book.status == 0 and "Multi" in book.out

    assert (await cli_run("verify")).status == 0


@pytest.mark.parametrize("argv", [["inspect"], ["inspect", "X-1", "--book", "1"]])
async def test_inspect_needs_one_code_or_one_book(cli_run: Cli, argv: list[str]) -> None:
    result = await cli_run(*argv)
    assert result.status == 2
    assert "give a CODE or --book ID" in result.err


async def test_the_tools_need_a_database_url(cli_run: Cli,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A settings error (2, as a malformed URL is), not verify's 1 ("the two differ")."""
    monkeypatch.delenv("COUPONSVC_DATABASE_URL")
    result = await cli_run("verify")
    assert (result.status, result.err) == (2, "couponsvc: set COUPONSVC_DATABASE_URL\n")


def _port_nothing_listens_on() -> int:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port: int = unused.getsockname()[1]
        return port


@pytest.mark.parametrize("which", ["Redis", "Postgres"])
@pytest.mark.parametrize("command", [["verify"], ["inspect", "X-1"], ["rebuild"]])
async def test_a_store_out_of_reach_is_one_line_and_exit_3(
        cli_run: Cli, monkeypatch: pytest.MonkeyPatch, which: str, command: list[str]) -> None:
    """Not a traceback, and not verify's 1 ("the two differ") or inspect's 1
    ("unknown"): a script can tell an outage from an answer."""
    port = _port_nothing_listens_on()
    if which == "Redis":
        monkeypatch.setenv("COUPONSVC_REDIS_URL", f"redis://127.0.0.1:{port}/0")
        monkeypatch.setenv("COUPONSVC_REDIS_CLUSTER", "false")
    else:
        monkeypatch.setenv("COUPONSVC_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{port}/x")

    result = await cli_run(*command)

    assert result.status == 3, result
    [line] = result.err.strip().splitlines()
    assert line.startswith(f"couponsvc: cannot reach {which}"), line
    assert "Traceback" not in result.err


async def test_a_drain_with_postgres_out_of_reach_is_exit_3(service: Service) -> None:
    """With nothing pending the writer has nothing to send Postgres, and its
    pool connects lazily: a drain said it was done while Postgres was down."""
    port = _port_nothing_listens_on()
    await service.redis.flushdb()

    result = await console(service, "writer", "--drain",
                           COUPONSVC_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/x")

    assert result.returncode == 3, result
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("couponsvc: cannot reach Postgres"), line


@pytest.mark.parametrize("ident", ["²", "99999999999999999999999"])
async def test_inspect_takes_a_book_number_only_as_one(cli_run: Cli, ident: str) -> None:
    """A superscript digit passes str.isdigit(), and a number past Postgres's
    integer was sent to it: both were tracebacks, both are just unknown."""
    result = await cli_run("inspect", "--book", ident)

    assert result.status == 1, result
    assert "Traceback" not in result.err
