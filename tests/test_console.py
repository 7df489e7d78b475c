"""lmforge.console.say, the one output channel: printed and logged (train.log) on global rank 0 only."""

from __future__ import annotations

import logging

import pytest
from lightning.pytorch.utilities import rank_zero_only

from lmforge.console import say


@pytest.fixture
def rank():
    saved = rank_zero_only.rank

    def set_rank(r: int) -> None:
        rank_zero_only.rank = r

    yield set_rank
    rank_zero_only.rank = saved


def test_rank_zero_prints_and_logs(rank, capsys, caplog):
    rank(0)
    with caplog.at_level(logging.INFO, logger="lmforge"):
        say("\nRun folder (completed): /tmp/x\n  summary.json")
    assert capsys.readouterr().out == "\nRun folder (completed): /tmp/x\n  summary.json\n"  # printed as given
    assert [r.getMessage() for r in caplog.records] == ["Run folder (completed): /tmp/x\n  summary.json"]


def test_other_ranks_are_silent_unless_asked(rank, capsys, caplog):
    rank(1)
    with caplog.at_level(logging.INFO, logger="lmforge"):
        say("once per run")
        assert capsys.readouterr().out == "" and not caplog.records
        say("from every rank", all_ranks=True)
    assert capsys.readouterr().out == "from every rank\n" and len(caplog.records) == 1
