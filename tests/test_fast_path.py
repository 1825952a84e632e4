"""The fast path's pure parts: tickets and where the bytes may come from. The transfers themselves
are tested between real daemons (test_peers.py, test_lan.py)."""

from peerix.net.fast_path import TICKET_TTL, Tickets, nearby_hosts


def test_a_ticket_opens_its_path_to_its_peer_until_it_expires() -> None:
    tickets, now, peer = Tickets(12306), 1_800_000_000.0, "p" * 64
    ticket = tickets.issue("a" * 32, peer, now)
    assert tickets.holder(ticket, "a" * 32, now + TICKET_TTL - 1) == peer
    assert tickets.holder(ticket, "a" * 32, now + TICKET_TTL + 1) is None  # expired
    assert tickets.holder(ticket, "b" * 32, now) is None  # another path
    assert Tickets(12306).holder(ticket, "a" * 32, now) is None  # another process (its own key)
    expiry, _, mac = ticket.split(".")
    assert tickets.holder(f"{int(expiry) + 3600}.{peer}.{mac}", "a" * 32, now) is None  # a later expiry, forged
    assert tickets.holder(f"{expiry}.{'q' * 64}.{mac}", "a" * 32, now) is None  # passed on to another peer
    for garbage in ("", ".", "..", "any", "1.2.3", f"-{expiry}.{peer}.{mac}", "9" * 40 + f".{peer}.{mac}"):
        assert tickets.holder(garbage, "a" * 32, now) is None, garbage
    assert tickets.offer("a" * 32, peer)["port"] == 12306


def test_bytes_come_over_the_fast_path_from_nearby_addresses_only() -> None:
    addresses = ["93.184.216.34:12305", "10.0.0.2:12305", "127.0.0.1:4000", "10.0.0.2:9",
                 "[fe80::1]:12305", "[fd00::2]:12305", "[2a00:1450::1]:12305", "192.168.1.5:1", "nonsense"]
    # public addresses never (the bytes are not encrypted); IPv6 link-local would need a scope
    assert nearby_hosts(addresses) == ["10.0.0.2", "127.0.0.1", "fd00::2", "192.168.1.5"]
