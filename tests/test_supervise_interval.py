"""supervise looks at its engine every ~5 s, each wait drawn anew within +-10%, so that loops a stall
of the worker bunched together drift apart instead of probing in step."""

from berth.node import supervision


def test_each_wait_is_drawn_around_the_health_interval():
    waits = [supervision.next_look_in_s() for _ in range(200)]
    low = supervision.HEALTH_INTERVAL_S * (1 - supervision.HEALTH_INTERVAL_JITTER)
    high = supervision.HEALTH_INTERVAL_S * (1 + supervision.HEALTH_INTERVAL_JITTER)
    assert all(low <= wait <= high for wait in waits)
    assert len(set(waits)) > 150  # drawn, not one fixed value
    assert low + 0.25 < sum(waits) / len(waits) < high - 0.25  # around 5 s on average, not at an edge


def test_the_interval_follows_the_setting(monkeypatch):
    monkeypatch.setattr(supervision, "HEALTH_INTERVAL_S", 0.05)
    assert all(0.045 <= supervision.next_look_in_s() <= 0.055 for _ in range(50))
