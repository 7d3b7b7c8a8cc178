"""Application Auto Scaling's target-tracking alarms: 3 of 3 one-minute datapoints above the target
to scale out, 15 of 15 below 90 % of it to scale in."""
import pytest

from core.target_tracking import capacity_for, firing_alarm, period_seconds


def test_a_short_burst_scales_nothing():
    assert firing_alarm([5, 30, 30], 10) is None  # two minutes above: not yet
    assert firing_alarm([30, 30], 10) is None  # not enough datapoints yet
    assert firing_alarm([30, 30, 10], 10) is None  # on target is not above it


def test_three_minutes_above_fire_the_high_alarm():
    alarm = firing_alarm([1, 30, 25, 40], 10)
    assert (alarm.direction, alarm.metric, alarm.datapoints) == ("out", 40, 3)
    assert capacity_for(alarm, 2, 10, 1, 100) == 8  # ceil(2 x 40 / 10)
    assert capacity_for(alarm, 2, 10, 1, 5) == 5  # clamped to the maximum


def test_fifteen_minutes_below_ninety_percent_fire_the_low_alarm():
    assert firing_alarm([8.9] * 14, 10) is None
    assert firing_alarm([9.0] * 15, 10) is None  # 90 % of the target is not below it
    assert firing_alarm([8.9] * 14 + [12], 10) is None
    alarm = firing_alarm([20] + [2.5] * 15, 10)
    assert (alarm.direction, alarm.threshold) == ("in", 9.0)
    assert capacity_for(alarm, 4, 10, 1, 100) == 1  # ceil(4 x 2.5 / 10)
    assert capacity_for(alarm, 4, 10, 2, 100) == 2  # clamped to the minimum


def test_a_missing_datapoint_breaches_neither_alarm():
    # A minute without invocations has no datapoint (None): neither high nor low, so it breaks a run of either.
    assert firing_alarm([30, None, 30, 30], 10) is None
    assert firing_alarm([30, 30, None], 10) is None
    assert firing_alarm([None] * 15, 10) is None  # no traffic is not low traffic
    assert firing_alarm([2.5] * 7 + [None] + [2.5] * 7, 10) is None
    assert firing_alarm([None] + [2.5] * 15, 10).direction == "in"


def test_an_alarm_never_asks_against_its_direction():
    out = firing_alarm([11, 11, 11], 10)
    assert capacity_for(out, 10, 10, 1, 100) == 11
    assert capacity_for(out, 1, 10, 1, 100) == 2


@pytest.mark.parametrize("scale, seconds", [(1, 60), (60, 1), (12, 5)])
def test_time_scale_compresses_a_minute(scale, seconds):
    assert period_seconds(scale) == seconds


def test_bad_arguments():
    with pytest.raises(ValueError):
        firing_alarm([1, 2, 3], 0)
    with pytest.raises(ValueError):
        period_seconds(0.5)
