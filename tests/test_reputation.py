from peerix.swarm.reputation import Reputation


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_back_off_exponentially_and_success_resets() -> None:
    clock = Clock()
    rep = Reputation(base_backoff=2, max_backoff=30, clock=clock)
    delays = []
    for _ in range(6):
        rep.failed("dead", "timeout")
        delays.append(rep.peers["dead"].backoff_until - clock.now)
    assert delays == [2, 4, 8, 16, 30, 30]
    assert not rep.available("dead") and rep.order(["dead", "new"]) == ["new"]
    clock.now += 31
    assert rep.available("dead")
    rep.succeeded("dead", 0.01)
    rep.failed("dead", "blip")
    assert rep.peers["dead"].backoff_until - clock.now == 2


def test_order_prefers_reliable_then_fast_then_recent() -> None:
    clock = Clock()
    rep = Reputation(clock=clock)
    for _ in range(5):
        rep.succeeded("fast", 0.002)
        rep.succeeded("slow", 0.200)
    rep.succeeded("flaky", 0.001)
    rep.failed("flaky", "reset")
    clock.now += 10_000  # let flaky's backoff expire
    assert rep.order(["flaky", "slow", "fast", "unknown"]) == ["fast", "slow", "unknown", "flaky"]
    assert rep.order(["fast", "fast"]) == ["fast"]


def test_a_ban_outlasts_later_successes() -> None:
    clock = Clock()
    rep = Reputation(clock=clock)
    rep.failed("liar", "mismatch")
    rep.ban("liar", 3600, "mismatch")
    clock.now += 10
    rep.succeeded("liar", 0.01)  # it still answers narinfo requests quickly
    assert rep.banned("liar") and not rep.available("liar") and rep.order(["liar"]) == []
    clock.now += 3600
    assert not rep.banned("liar") and rep.available("liar")


def test_a_restarted_peer_leaves_its_backoff_but_not_its_ban() -> None:
    clock = Clock()
    rep = Reputation(clock=clock)
    for _ in range(5):
        rep.failed("restarted", "timeout")
        rep.failed("liar", "mismatch")
    rep.ban("liar", 3600, "mismatch")
    rep.restarted("restarted")
    rep.restarted("liar")
    rep.restarted("never seen")
    assert rep.available("restarted") and rep.peers["restarted"].failures == 5  # its record stays
    rep.failed("restarted", "timeout")
    assert rep.peers["restarted"].backoff_until - clock.now == 2  # a new process starts its backoff afresh
    assert not rep.available("liar") and "never seen" not in rep.peers
