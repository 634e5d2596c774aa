"""Sixty seconds of load, faults and bad input against the whole topology in processes; then nothing may be lost.

The topology, the faults and the verdict are described in :mod:`tests.chaos.harness`;
``python bench/chaos.py --duration 600`` runs the same for longer. Run this one with ``-s`` to see
the table (it is in the assertion message when the test fails).

Besides every change landing once (its journal row), the replica's ``items`` must equal the
source's at the end: changes of one row reach the cdc sink out of order (a push redelivered while
its batch waits for the restarted database, changes of one row spread over three sink replicas),
and the sink must still never let an older change overwrite a newer one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.badinput import BOUNDED_BEFORE_HELLO, GARBAGE_FRAMES, MALFORMED_HTTP
from tests.chaos.harness import ChaosSettings, run_chaos


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_sixty_seconds_of_chaos_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    settings = ChaosSettings(duration=60.0, drain_timeout=60.0)
    report = await run_chaos(settings, tmp_path)
    table = "\n".join([*report.timeline, *report.lines()])
    print(table)
    verdict = report.verdict

    assert verdict.lost == 0, table
    assert verdict.duplicates == 0, table
    assert verdict.mismatches == 0, f"the replica's items differ from the source's\n{table}"
    assert not verdict.unexpected_dead_letters, table
    assert verdict.dead_letters_without_reason == 0, table
    assert verdict.accepted_http >= settings.http_rate * settings.duration * 0.5, f"the HTTP load did not flow\n{table}"
    assert verdict.accepted_changes >= settings.sql_rate * settings.duration * 0.5, f"the SQL load did not flow\n{table}"
    assert verdict.accepted_bad_fit > 0 and verdict.dead_lettered == verdict.accepted_bad_fit, table
    assert all(report.faults[kind] >= 1 for kind in settings.faults), f"a fault kind was never injected\n{table}"
    assert report.takeovers, f"no source takeover was measured\n{table}"
    expected_bad = {f"http.{kind}" for kind in MALFORMED_HTTP} | {f"frame.{kind}" for kind in GARBAGE_FRAMES}
    expected_bad |= {f"config.{bad.kind}" for bad in report.bad_configs}
    assert {label for label, sent in report.bad_input_sent.items() if sent > 0} >= expected_bad, table
    assert not report.bad_input_mishandled, table
    assert report.bad_input_handled == report.bad_input_sent, table
    logged = report.rejections_logged
    closed_by_mesh = sum(
        report.bad_input_handled[f"frame.{kind}"]
        for kind, (_, closes) in GARBAGE_FRAMES.items()
        if closes and kind not in BOUNDED_BEFORE_HELLO
    )
    # A frame may reach the mesh just before a kill -9 of the mesh: the connection closes, but not because of the frame.
    mesh_logged = logged["mesh undecodable"] + logged["mesh headerless"]
    assert mesh_logged >= closed_by_mesh - report.faults["mesh_restart"], f"the mesh did not log every bad frame\n{table}"
    assert logged["mesh refused"] >= 1, f"the mesh logged no refusal of a connection before its HELLO\n{table}"
    by_status = {"oversize_body": "413", "oversize_event": "413", "topic_not_allowed": "403"}
    for status in ("413", "403"):
        refused = sum(report.bad_input_handled[f"http.{kind}"] for kind, code in by_status.items() if code == status)
        assert logged[f"http {status}"] >= refused, f"the http-source did not log every {status}\n{table}"
    refused_as_malformed = sum(report.bad_input_handled[f"http.{kind}"] for kind in MALFORMED_HTTP if kind not in by_status)
    assert logged["http 400"] + logged["http 415"] >= refused_as_malformed, f"the http-source did not log every refusal\n{table}"


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_redis_failovers_under_load_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    """The registry behind Sentinel, replica-acknowledged: its primary killed -9, then (the other one) paused."""
    settings = ChaosSettings(
        duration=30.0, drain_timeout=60.0, sentinel=True, faults=("redis_failover", "connector_kill"), major_fault_every=10.0
    )
    report = await run_chaos(settings, tmp_path)
    table = "\n".join([*report.timeline, *report.lines()])
    print(table)
    verdict = report.verdict

    assert report.faults["redis_failover"] >= 2, f"the primary was not failed over twice (kill -9, SIGSTOP)\n{table}"
    assert verdict.lost == 0, table
    assert verdict.duplicates == 0, table
    assert verdict.mismatches == 0, f"the replica's items differ from the source's\n{table}"
    assert verdict.accepted_changes >= settings.sql_rate * settings.duration * 0.5, f"the SQL load did not flow\n{table}"
    assert verdict.accepted_http >= settings.http_rate * settings.duration * 0.5, f"the HTTP load did not flow\n{table}"
