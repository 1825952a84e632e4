"""Text for people and from people: sizes, addresses, booleans, counts and ages, as both servers read and show
them."""

import re


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, with IPv6 hosts in brackets ([::1]:12304)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_size(text: str | int) -> int:
    """Bytes, optionally with a K, M, G or T suffix (powers of 1024)."""
    if isinstance(text, bool):
        raise ValueError(f"expected a size, got {text!r}")
    if isinstance(text, int) and text >= 0:
        return text
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", str(text).strip(), re.IGNORECASE)
    if not match:
        raise ValueError(f"expected a size such as 1073741824, 512M or 1G, got {text!r}")
    return int(match[1]) << (10 * " KMGT".index(match[2].upper() or " "))


def parse_seconds(value: object) -> float:
    """A positive duration: a number of seconds, or a string with a unit (500ms, 90s, 3m, 12h, 7d)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(value))
    if isinstance(value, bool) or not match or float(match[1]) <= 0:
        raise ValueError(f"expected a positive duration such as 90, 90s, 3m or 12h, got {value!r}")
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2] or "s"]


def parse_count(value: object, minimum: int = 1) -> int:
    """A whole number of at least `minimum` (`3` and "3", not 3.5 or true)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"expected a whole number of at least {minimum}, got {value!r}")
    return value


def parse_port(value: object) -> int:
    port = parse_count(value)
    if port > 65535:
        raise ValueError(f"expected a port from 1 to 65535, got {value!r}")
    return port


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    if str(text).lower() in ("1", "true", "yes", "on"):
        return True
    if str(text).lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def size_text(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError


def counted(count: int, noun: str) -> str:
    """3, 'path' -> '3 paths'; 1, 'path' -> '1 path'."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def duration(seconds: float) -> str:
    """A span for people: '45s', '3m', '2h', '1d'."""
    seconds = max(0.0, seconds)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit}"
    return f"{seconds:.0f}s"


def ago(moment: float | None, now: float) -> str:
    """How long before `now` a wall-clock moment was: '5s ago', '3m ago'; '-' for none."""
    return f"{duration(now - moment)} ago" if moment else "-"
