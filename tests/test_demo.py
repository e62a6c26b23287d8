"""The demo explains its alert level: a fleet-sized false_alarm_rate and what it gives."""

from __future__ import annotations

import pytest

from detector.demo import fleet_rate, generate_stream, rate_outcomes


def test_a_fleet_sized_rate_raises_the_alert_level_and_cuts_expected_false_alerts(model_dir):
    anomalous = {"pump-0", "pump-5"}
    stream = generate_stream(10, 40, anomalous)
    default, fleet = rate_outcomes(model_dir, stream, anomalous, [1e-3, 1e-5])
    assert default.false_alerts_per_day == pytest.approx(
        1e-3 * 10 * 1440
    ) and fleet.false_alerts_per_day == pytest.approx(1e-5 * 10 * 1440)
    assert fleet.alert_level > default.alert_level
    assert fleet.alerted <= default.alerted and fleet.recall == 1.0 and fleet.precision >= default.precision


def test_fleet_rate_aims_at_a_few_false_alerts_a_day_for_the_whole_fleet():
    assert fleet_rate(1000, interval_s=60.0, false_alerts_per_day=1.44) == pytest.approx(1e-5)
    assert fleet_rate(10_000) == 1e-5, "never below what the simulated alert level resolves"
