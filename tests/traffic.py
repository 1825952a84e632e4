"""Where a process tree sends packets, read from strace: the proof that a run stays on this machine.

    strace(*command, output=FILE)   # the command, traced with its children and threads
    sent_to(FILE)                   # {(address, port)} of every packet the trace shows going out

A packet goes out with a TCP connect that succeeds or is in progress (its SYN), and with every send,
sendto, sendmsg, sendmmsg, write or writev on an IP socket that succeeds: to the address it names, or
else to the socket's peer (strace -yy shows it). A UDP connect sends nothing by itself, and a call that
failed (no route in a namespace with only loopback) sent nothing.
"""

import ipaddress
import re
from pathlib import Path

CALLS = ("connect", "sendto", "sendmsg", "sendmmsg", "write", "writev")

_LINE = re.compile(r"^(?P<pid>\d+) +(?P<call>\w+)\((?P<rest>.*)$")
_RESUMED = re.compile(r"^(?P<pid>\d+) +<\.\.\. (?P<call>\w+) resumed>(?P<rest>.*)$")
_SOCKET = re.compile(r"^\d+<(?P<kind>[A-Za-z0-9-]+):\[(?P<ends>.*?)\]>")
_PEER = re.compile(r"->\[?(?P<address>[0-9a-fA-F:.]+?)\]?:(?P<port>\d+)$")
_ADDRESS = re.compile(r'sin6?_port=htons\((?P<port>\d+)\).*?(?:inet_addr\("(?P<v4>[\d.]+)"\)'
                      r'|inet_pton\(AF_INET6, "(?P<v6>[0-9a-fA-F:.]+)")')


def strace(*command: str, output: Path) -> list[str]:
    return ["strace", "-f", "-qq", "--seccomp-bpf", "-yy", "-v", "-s", "64", "-e", f"trace={','.join(CALLS)}",
            "-o", str(output), *command]


def _calls(trace: Path) -> list[tuple[str, str]]:
    """(call, its text with the result), with calls that strace split across threads joined again."""
    pending: dict[str, tuple[str, str]] = {}
    calls = []
    for line in trace.read_text(errors="replace").splitlines():
        if resumed := _RESUMED.match(line):
            call, start = pending.pop(resumed["pid"], (resumed["call"], ""))
            calls.append((call, start + resumed["rest"]))
        elif started := _LINE.match(line):
            if started["rest"].endswith("<unfinished ...>"):
                pending[started["pid"]] = (started["call"], started["rest"][:-len("<unfinished ...>")])
            else:
                calls.append((started["call"], started["rest"]))
    return calls


def sent_to(trace: Path) -> set[tuple[str, int]]:
    destinations = set()
    for call, text in _calls(trace):
        result = text.rpartition(" = ")[2]
        if not (result[:1].isdigit() or result.startswith("-1 EINPROGRESS")):
            continue  # failed: nothing was sent
        socket = _SOCKET.match(text)
        if socket is None or not socket["kind"].startswith(("TCP", "UDP")):
            continue  # a file, a pipe, a unix or netlink socket: nothing leaves the machine that way
        named = [(m["v4"] or m["v6"], int(m["port"])) for m in _ADDRESS.finditer(text)]
        if call == "connect":
            if socket["kind"].startswith("TCP"):
                destinations.update(named)
            continue
        if named:
            destinations.update(named)
        elif socket["ends"] and (peer := _PEER.search(socket["ends"])):
            destinations.add((peer["address"], int(peer["port"])))
    return destinations


def off_loopback(destinations: set[tuple[str, int]]) -> set[tuple[str, int]]:
    def loopback(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return ip.is_loopback

    return {(address, port) for address, port in destinations if not loopback(address)}
