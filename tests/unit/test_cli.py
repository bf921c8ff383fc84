"""The command line: which commands need a JWT secret, and `couponsvc writer`'s
options and the WriterConfig they build."""

from __future__ import annotations

import os
from dataclasses import astuple, replace
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from couponsvc import cli
from couponsvc.cli import parser, writer_config
from couponsvc.settings import Settings
from couponsvc.upload import UploadError, read_codes
from couponsvc.writer import WriterConfig

# Production settings without a JWT secret.
NO_SECRET = {"COUPONSVC_ENV": "prod", "COUPONSVC_DATABASE_URL": "postgresql://db/coupons"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No COUPONSVC_* variable from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("COUPONSVC_"):
            monkeypatch.delenv(name)


@pytest.fixture
def no_secret(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in NO_SECRET.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("command", ["_writer", "_migrate", "_rebuild", "_verify", "_inspect"])
def test_commands_that_never_see_a_token_start_without_a_secret(
        command: str, no_secret: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer, migrate and the operator tools get the rest of the settings,
    checked, but no JWT secret is asked of them (least privilege)."""
    received: list[Settings] = []

    def command_ran(settings: Settings, _: object) -> int:
        received.append(settings)
        return 0

    monkeypatch.setattr(cli, command, command_ran)
    with pytest.raises(SystemExit) as exit_:
        cli.main([command.lstrip("_")])
    assert exit_.value.code == 0
    assert [(s.env, s.database_url, s.jwt_secret) for s in received] == [
        ("prod", NO_SECRET["COUPONSVC_DATABASE_URL"], "")]


def test_a_token_can_be_issued_without_a_database(
        clean_env: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """As README shows it: the secret make run wrote, nothing else."""
    monkeypatch.setenv("COUPONSVC_JWT_SECRET", "s" * 32)

    with pytest.raises(SystemExit) as exit_:
        cli.main(["token", "--sub", "alice", "--scope", "coupons:write"])

    assert exit_.value.code == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, "s" * 32, algorithms=["HS256"])
    assert (claims["sub"], claims["scope"]) == ("alice", "coupons:write")


def test_the_api_in_prod_still_needs_a_database(
        clean_env: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COUPONSVC_JWT_SECRET", "s" * 32)

    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve"])

    assert exit_.value.code == 2
    assert "COUPONSVC_DATABASE_URL is required" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["serve"], ["token", "--sub", "alice"]])
def test_serving_and_issuing_tokens_still_need_a_strong_secret(
        argv: list[str], no_secret: None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "COUPONSVC_JWT_SECRET must be at least 32 bytes" in capsys.readouterr().err


def test_writer_options_left_out_keep_the_config_defaults() -> None:
    config = writer_config(parser().parse_args(["writer"]))
    assert astuple(config) == astuple(replace(WriterConfig(), consumer=config.consumer))


def test_writer_options_reach_the_config() -> None:
    args = parser().parse_args(["writer", "--batch-size", "500", "--parallel-batches", "2",
                                "--linger-ms", "200", "--claim-idle-ms", "1500"])
    config = writer_config(args)
    assert (config.batch_size, config.parallel_batches, config.linger_s,
            config.claim_idle_ms) == (500, 2, 0.2, 1500)


def test_writer_help_shows_the_config_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["writer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = WriterConfig()
    assert f"events per transaction at most ({defaults.batch_size})" in text
    assert f"(fewer, larger transactions) ({round(defaults.linger_s * 1000)})" in text


@pytest.mark.parametrize(("argv", "says"), [
    (["--sub", ""], "--sub must be a non-empty UTF-8 string"),
    (["--sub", "al\udcffice"], "--sub must be a non-empty UTF-8 string"),  # argv not UTF-8
    (["--sub", "a", "--ttl", "0"], "--ttl must be from 1 to"),
    (["--sub", "a", "--ttl", "-100"], "--ttl must be from 1 to"),
    (["--sub", "a", "--ttl", str(10**12)], "--ttl must be from 1 to"),
])
def test_token_refuses_what_the_api_would_refuse(
        clean_env: None, monkeypatch: pytest.MonkeyPatch, argv: list[str], says: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Rather than print a token every request would get a 401 with: a usage error."""
    monkeypatch.setenv("COUPONSVC_JWT_SECRET", "s" * 32)

    with pytest.raises(SystemExit) as exit_:
        cli.main(["token", *argv])

    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert says in captured.err and captured.out == ""


@pytest.mark.parametrize("argv", [
    ["writer", "--batch-size", "0"], ["writer", "--parallel-batches", "-1"],
    ["writer", "--claim-idle-ms", "-1"],
    ["writer", "--linger-ms", "-5"], ["writer", "--metrics-port", "70000"],
    ["verify", "--limit", "-1"], ["upload", "f.txt", "--book", "b", "--chunk", "0"],
])
def test_numbers_out_of_range_are_usage_errors(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(argv)

    assert exit_.value.code == 2
    assert "must be" in capsys.readouterr().err


def test_upload_skips_a_csv_header_only_on_the_first_row(tmp_path: Path) -> None:
    """A code may well be called CODE: only a first row whose first column is
    `code` is a header (every such row used to be dropped)."""
    with_header = tmp_path / "with.csv"
    with_header.write_text("Code,note\nA-1,x\nCODE,y\ncode,z\n")
    without = tmp_path / "without.csv"
    without.write_text("B-1,x\nCODE,y\n")

    assert list(read_codes(with_header)) == ["A-1", "CODE", "code"]
    assert list(read_codes(without)) == ["B-1", "CODE"]


def test_upload_names_the_line_of_a_malformed_csv(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text('code\nA-1,x\n"BAD"x,1\nB-1,y\n')

    with pytest.raises(UploadError) as refused:
        list(read_codes(path))

    assert str(refused.value) == f"{path}, line 3: not valid CSV: ',' expected after '\"'"


def test_upload_without_a_token_is_a_usage_error(
        clean_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    codes = tmp_path / "codes.txt"
    codes.write_text("A-1\n")

    with pytest.raises(SystemExit) as exit_:
        cli.main(["upload", str(codes), "--book", "b"])

    assert exit_.value.code == 2
    assert "pass --token or set COUPONSVC_TOKEN" in capsys.readouterr().err


def test_a_token_cannot_be_issued_for_a_public_key_deployment(
        clean_env: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    public_key = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    monkeypatch.setenv("COUPONSVC_JWT_ALGORITHM", "ES256")
    monkeypatch.setenv("COUPONSVC_JWT_PUBLIC_KEY", public_key)

    with pytest.raises(SystemExit) as exit_:
        cli.main(["token", "--sub", "alice"])

    assert exit_.value.code == 2
    assert "only with a shared secret" in capsys.readouterr().err
