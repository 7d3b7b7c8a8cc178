"""What the local backend asks its gateway for when the configuration was made for AWS."""
import logging

from backends.local.gateway.instances import MAX_LOCAL_INSTANCES
from backends.local.hosting import LocalHosting
from core.config import AutoscalingConfig


class RecordingGateway:
    """Stands in for GatewayConnection: records what the hosting service sends to the gateway."""

    def __init__(self):
        self.sent = []

    def client(self):
        return self

    def set_autoscaling(self, name, registration):
        self.sent.append((name, registration))


def test_an_aws_sized_autoscaling_range_is_followed_up_to_the_local_cap(caplog):
    gateway = RecordingGateway()
    hosting = LocalHosting(gateway, store=None)
    with caplog.at_level(logging.WARNING):
        state = hosting.register_autoscaling("ep", "AllTraffic", AutoscalingConfig(min_capacity=1, max_capacity=100))
    (name, sent), = gateway.sent
    assert (sent["min_capacity"], sent["max_capacity"]) == (1, MAX_LOCAL_INSTANCES)
    assert (state.min_capacity, state.max_capacity) == (1, MAX_LOCAL_INSTANCES)
    assert sent["policy"]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 10.0  # the policy unchanged
    assert "capped locally" in caplog.text


def test_a_range_within_the_cap_is_sent_as_it_is(caplog):
    gateway = RecordingGateway()
    with caplog.at_level(logging.WARNING):
        LocalHosting(gateway, store=None).register_autoscaling("ep", "AllTraffic",
                                                               AutoscalingConfig(min_capacity=2, max_capacity=4))
    assert (gateway.sent[0][1]["min_capacity"], gateway.sent[0][1]["max_capacity"]) == (2, 4)
    assert "capped" not in caplog.text
