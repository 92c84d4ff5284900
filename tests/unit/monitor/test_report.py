"""`lepton monitor report` before any drift report exists says what it waits for."""

from __future__ import annotations

from services.monitor.report import render


def test_no_report_yet_names_the_window_it_waits_for() -> None:
    text = render([], 1000)
    assert text.startswith("no monitoring report yet: a model version's first report comes "
                           "after 1,000 of its predictions (LEPTON_MONITOR_WINDOW)")


def test_a_filling_window_says_how_far_it_has_filled() -> None:
    text = render([{"model": "transactions", "version": 3,
                    "filling": {"predictions": 412, "window": 1000}}], 1000)
    assert text == ("transactions v3: window filling, 412 of 1,000 predictions (drift is "
                    "reported once it is full)")


def test_a_drift_report_replaces_the_filling_line() -> None:
    text = render([{"model": "transactions", "version": 3, "filling": None,
                    "drift": {"at": "t", "window": 1000, "features": [], "reference": "r"}}],
                  1000)
    assert text == "transactions v3: window 1000 predictions at t; reference: r"
