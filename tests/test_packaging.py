"""The Nix side: every .nix file parses, the module's options match the README, deploy's commands."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from nixtools import run

pytestmark = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")


def tracked(pattern: str) -> list[str]:
    return subprocess.run(["git", "ls-files", pattern], capture_output=True, text=True, cwd=ROOT).stdout.split()


def test_every_nix_file_parses() -> None:
    files = [*{*tracked("*.nix"), "flake.nix", "module.nix"}]
    assert {"flake.nix", "module.nix", "nix/package.nix", "nix/iroh.nix", "nix/vm-test.nix"} <= set(files)
    for file in files:
        run("nix-instantiate", "--parse", str(ROOT / file))
    lock = json.loads((ROOT / "flake.lock").read_text())
    nixpkgs = lock["nodes"]["nixpkgs"]
    assert nixpkgs["original"]["ref"] == "nixos-26.05" and len(nixpkgs["locked"]["rev"]) == 40
    assert nixpkgs["locked"]["narHash"].startswith("sha256-")


def module_options() -> dict[str, dict]:
    expression = (
        "let lib = import ./tests/nix/stub-lib.nix; "
        "module = import ./module.nix { inherit lib; config = { }; "
        "pkgs = { formats.toml = _: { type = \"toml\"; }; }; }; "
        "in lib.flatten \"\" module.options"
    )
    return json.loads(run("nix-instantiate", "--eval", "--strict", "--json", "-E", expression, cwd=ROOT).stdout)


def readme_options() -> dict[str, tuple[str, str]]:
    rows = re.findall(r"^\| `(services\.[\w.-]+)` \| ([^|]+) \| `(.+?)` \|", (ROOT / "README.md").read_text(), re.M)
    return {name: (kind.strip(), default) for name, kind, default in rows}


def test_readme_documents_every_module_option_and_its_default() -> None:
    options, documented = module_options(), readme_options()
    assert set(options) == set(documented)
    for name, option in options.items():
        default = option["default"] if name.endswith(".package") else json.dumps(option["default"])
        assert documented[name] == (option["type"], default), name


def test_readme_documents_every_daemon_setting() -> None:
    from peerix.daemon.config import SETTINGS

    readme = (ROOT / "README.md").read_text()
    missing = [name for name, f in SETTINGS.items() if f"`{name}`" not in readme]
    assert not missing, f"README lacks daemon settings: {missing}"


def deploy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "deploy"), *args], capture_output=True, text=True, timeout=60)


def test_deploy_dry_run_prints_the_commands(tmp_path: Path) -> None:
    result = deploy("--dry-run", "--user", "admin", "--sudo", "alpha", "beta=10.0.0.2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "nixos-rebuild switch --flake .#alpha --target-host admin@alpha --use-remote-sudo",
        "nixos-rebuild switch --flake .#beta --target-host admin@10.0.0.2 --use-remote-sudo",
    ]
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "flake.nix").write_text("{ outputs = { self }: { nixosConfigurations = { alpha = { }; beta = { }; }; }; }")
    result = deploy("--dry-run", "--flake", f"path:{fleet}", "--action", "boot", "--build-host", "builder", "all")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"nixos-rebuild boot --flake path:{fleet}#{host} --target-host {host} --build-host builder"
        for host in ("alpha", "beta")
    ]


def test_deploy_refuses_bad_input() -> None:
    assert deploy().returncode == 2
    assert "Usage: deploy" in deploy("--help").stdout
    for args in (["--bogus", "a"], ["--action", "reboot", "a"], ["bad/name"]):
        result = deploy("--dry-run", *args)
        assert result.returncode == 2 and result.stderr.startswith("deploy: ")


def test_deploy_offline_says_nixpkgs_could_not_be_fetched(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "flake.nix").write_text('{ inputs.nixpkgs.url = "http://127.0.0.1:1/nixpkgs.tar.gz";\n'
                                     '  outputs = { self, nixpkgs }: { nixosConfigurations.alpha = { }; }; }\n')
    result = deploy("--dry-run", "--flake", f"path:{fleet}", "all")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"deploy: cannot list the hosts of path:{fleet}: Nix could not fetch its inputs "
                                    "(nixpkgs; is this machine offline?): error: unable to download "
                                    "'http://127.0.0.1:1/nixpkgs.tar.gz'"), result.stderr
    assert result.stderr.count("\n") == 1


def test_readme_puts_the_commands_on_path() -> None:
    """The quick start's way to type `peerix` works: the line the README gives, then `peerix --version`."""
    readme = (ROOT / "README.md").read_text()
    [line] = re.findall(r"\(`(export PATH=[^`]+)`\)", readme)
    if not (ROOT / ".venv/bin/peerix").exists():
        pytest.skip("scripts/dev has not made .venv here")
    result = subprocess.run(["bash", "-c", f"{line} && peerix --version && peerix-tracker --version"], cwd=ROOT,
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("peerix "), result.stderr


def test_the_one_line_on_nixos_opens_the_firewall() -> None:
    """The README's NixOS example keeps its promise that peers can fetch from the host."""
    readme = (ROOT / "README.md").read_text()
    example = readme[readme.index("## NixOS"):]
    example = example[example.index("```nix"):example.index("```", example.index("```nix") + 3)]
    assert "services.peerix.enable = true;" in example and "services.peerix.openFirewall = true;" in example


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck")
def test_shell_scripts_are_shellcheck_clean() -> None:
    run("shellcheck", str(ROOT / "deploy"), str(ROOT / "scripts/dev"), str(ROOT / ".ci/run"))
