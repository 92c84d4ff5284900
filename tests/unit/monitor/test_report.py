"""`lepton monitor report` before any report exists says what it waits for."""

from __future__ import annotations

from services.monitor.report import render


def test_no_report_yet_names_the_window_it_waits_for() -> None:
    text = render([], 1000)
    assert text.startswith("no monitoring report yet: a model version's first report comes "
                           "after 1,000 of its predictions (LEPTON_MONITOR_WINDOW)")
