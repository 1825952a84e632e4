"""The README's fleet guide, step by step as written, with three hosts: A and B build and sign with the
fleet key, C (which builds nothing) gets both builds through its peerix. A build nobody signed is not
shared."""

import os
import re
import shlex
import sys
import tomllib
from pathlib import Path

import httpx

from peerix.cli.localfleet import LocalFleet

from conftest import ROOT, requires_nix
from nixtools import HERE, build, hash_part, nix, path_info, run

pytestmark = requires_nix


def guide() -> tuple[list[str], list[str], str]:
    """The guide's code blocks: the key command, the commands on a builder, every host's settings."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## A fleet that shares its own builds"):readme.index("\n## Tracker")]
    blocks = re.findall(r"```(\w+)\n(.*?)\n *```", section, re.S)
    sh = [[line.strip() for line in body.splitlines() if line.strip()] for kind, body in blocks if kind == "sh"]
    toml = [body for kind, body in blocks if kind == "toml"]
    assert len(sh) == 2 and len(toml) == 1, blocks
    return sh[0], sh[1], toml[0]


def test_a_fleet_shares_its_own_builds_as_the_readme_says(tmp_path: Path) -> None:
    make_key, on_builder, settings = guide()
    etc = tmp_path / "etc"  # the hosts' /etc: peerix's keys and Nix's configuration

    def as_written(line: str) -> list[str]:
        return [word.replace("/etc/", f"{etc}/") for word in shlex.split(line)]

    # 1. The fleet key, made once.
    [keygen] = make_key
    words = as_written(keygen)
    assert words[0] == "peerix"
    run(sys.executable, "-m", "peerix.cli", *words[1:])
    secret, public = etc / "peerix/fleet.sec", (etc / "peerix/fleet.pub").read_text()
    assert secret.stat().st_mode & 0o777 == 0o600 and public.startswith("fleet.example.org-1:")

    # 2. On a builder: Nix signs what it builds (A), and what the store holds already (B).
    configure, sign = on_builder
    (etc / "nix").mkdir()
    (etc / "nix/nix.conf").write_text((Path(os.environ["NIX_CONF_DIR"]) / "nix.conf").read_text())
    echo, line = configure.split(" >> ")
    assert echo.startswith("echo ") and line == "/etc/nix/nix.conf"
    with open(etc / "nix/nix.conf", "a") as conf:
        conf.write(shlex.split(echo)[1].replace("/etc/", f"{etc}/") + "\n")
    built_on_a = build_with(etc / "nix", seed=os.urandom(8).hex())  # signed as it is built
    built_on_b, unsigned = (build(HERE / "nix/closure.nix", seed=os.urandom(8).hex()) for _ in range(2))
    assert fleet_signed(built_on_a) and not fleet_signed(built_on_b)

    (tmp_path / "fleet").mkdir()
    fleet = LocalFleet(tmp_path / "fleet")
    try:
        fleet.start_tracker()
        a, b, c = fleet.host("a"), fleet.host("b"), fleet.host("c")
        nix("copy", "--no-check-sigs", "--to", str(a.store), str(built_on_a), str(unsigned))
        nix("copy", "--no-check-sigs", "--to", str(b.store), str(built_on_b))
        words = as_written(sign)
        assert words[:3] == ["nix", "store", "sign"] and words[-1] == "/run/current-system"
        nix(*words[1:-1], "--store", str(b.store), str(built_on_b))  # on B, its "system" is this closure
        assert fleet_signed(built_on_b, store=b.store)

        # 3. Every host trusts the fleet key, as the settings say.
        config = tmp_path / "peerix.toml"
        config.write_text(settings.replace("fleet.example.org-1:...", public))
        assert public in tomllib.loads(config.read_text())["trusted_public_keys"]
        for host in (a, b, c):
            host.start(config=config)
        fleet.wait_announced(a, [str(built_on_a)])
        fleet.wait_announced(b, [str(built_on_b)])

        c.realise(str(built_on_a), str(built_on_b))
        nix("store", "verify", "--store", str(c.store), "-r", str(built_on_a), str(built_on_b),
            "--trusted-public-keys", c.key.public.to_text(), "--sigs-needed", "1")
        assert a.peer_id not in fleet.holders(str(unsigned))  # not signed: neither announced...
        assert httpx.get(f"{c.url}/{hash_part(unsigned)}.narinfo").status_code == 404  # ...nor fetched
    finally:
        fleet.close()


def fleet_signed(path: Path, store: Path | None = None) -> bool:
    info = path_info(path, store=str(store) if store else None)[str(path)]
    return any(sig.startswith("fleet.example.org-1:") for sig in info.get("signatures", []))


def build_with(conf_dir: Path, seed: str) -> Path:
    """A build by a host whose Nix reads `conf_dir` (the guide's secret-key-files in it)."""
    out = run("env", f"NIX_CONF_DIR={conf_dir}", "nix-build", str(HERE / "nix/closure.nix"), "--no-out-link",
              "--argstr", "seed", seed).stdout.decode().strip()
    return Path(out)
