"""`couponsvc writer`'s options and the WriterConfig they build."""

from __future__ import annotations

from dataclasses import astuple, replace

import pytest

from couponsvc.cli import parser, writer_config
from couponsvc.writer import WriterConfig


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
