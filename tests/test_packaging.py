"""The Nix side: every .nix file parses, the module's options match the README, deploy's commands."""

import json
import re
import shlex
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
    expected = {"flake.nix", "module.nix", "nix/package.nix", "nix/iroh.nix", "nix/pyfusefilter.nix", "nix/vm-test.nix"}
    assert expected <= set(files)
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


def evaluate(settings: str) -> dict:
    """module.nix's config for a NixOS configuration's settings (a Nix attribute set), with the messages of
    its failing assertions, evaluated with the stub lib."""
    expression = f"let lib = import ./tests/nix/stub-lib.nix; in lib.evalModule ./module.nix ({settings})"
    return json.loads(run("nix-instantiate", "--eval", "--strict", "--json", "-E", expression, cwd=ROOT).stdout)


def command(evaluated: dict, service: str) -> tuple[list[str], dict]:
    """A service's command line, and the settings of the TOML file it is given (the stub renders them as JSON)."""
    args = shlex.split(evaluated["config"]["systemd"]["services"][service]["serviceConfig"]["ExecStart"])
    return args, json.loads(args[args.index("--config") + 1].split(":", 1)[1])


def as_toml(settings: dict, path: Path) -> Path:
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    return path


def test_the_module_runs_the_tracker_on_sqlite_or_postgresql(tmp_path: Path) -> None:
    from tracker.cli import build_parser
    from tracker.config import load

    def tracker_config(evaluated: dict):
        args, settings = command(evaluated, "peerix-tracker")
        return args, load(build_parser().parse_args(["serve", "--config", str(as_toml(settings, tmp_path / "t.toml"))]))

    sqlite = evaluate("{ services.peerix-tracker.enable = true; }")
    args, config = tracker_config(sqlite)
    assert sqlite["failed"] == [] and "postgresql" not in sqlite["config"]["services"]
    assert config.db == Path("/var/lib/peerix-tracker/tracker.sqlite") and "--db-password-file" not in args

    local = evaluate('{ services.peerix-tracker = { enable = true; database.type = "postgresql"; }; }')
    args, config = tracker_config(local)
    postgresql = local["config"]["services"]["postgresql"]
    assert local["failed"] == [] and postgresql["enable"]
    assert postgresql["ensureDatabases"] == ["peerix-tracker"]
    assert postgresql["ensureUsers"] == [{"name": "peerix-tracker", "ensureDBOwnership": True}]
    assert "local peerix-tracker peerix-tracker peer" in postgresql["authentication"]
    assert config.db == "postgresql://peerix-tracker@/peerix-tracker?host=/run/postgresql"
    assert config.db_password is None
    unit = local["config"]["systemd"]["services"]["peerix-tracker"]
    assert "postgresql.service" in unit["requires"] and "postgresql.service" in unit["after"]

    remote = evaluate('{ services.peerix-tracker = { enable = true; database = { type = "postgresql"; '
                      'createLocally = false; url = "postgresql://tracker@db.example.org:5432/peerix"; '
                      'passwordFile = "/run/secrets/tracker-db"; }; }; }')
    args, settings = command(remote, "peerix-tracker")
    assert remote["failed"] == [] and "postgresql" not in remote["config"]["services"]
    assert settings["db"] == "postgresql://tracker@db.example.org:5432/peerix"
    assert args[args.index("--db-password-file") + 1] == "%d/db-password"
    assert remote["config"]["systemd"]["services"]["peerix-tracker"]["serviceConfig"]["LoadCredential"] == [
        "db-password:/run/secrets/tracker-db"]


@pytest.mark.parametrize("database, message", [
    ('{ url = "postgresql://t@db/p"; }', "are for database.type"),
    ('{ type = "postgresql"; url = "postgresql://t@db/p"; }', "give a url, or createLocally"),
    ('{ type = "postgresql"; createLocally = false; }', "give a url, or createLocally"),
    ('{ type = "postgresql"; passwordFile = "/run/secrets/x"; }', "peer authentication"),
    ('{ type = "postgresql"; createLocally = false; url = "postgresql://t:hunter2@db/p"; }',
     "must not hold a password"),
    ('{ type = "postgresql"; createLocally = false; url = "postgresql://t@db/p"; passwordFile = "/nix/store/x"; }',
     "must not be in the Nix store"),
])
def test_the_module_refuses_contradicting_database_settings(database: str, message: str) -> None:
    failed = evaluate(f"{{ services.peerix-tracker = {{ enable = true; database = {database}; }}; }}")["failed"]
    assert len(failed) == 1 and message in failed[0], failed


def test_the_module_gives_the_daemon_every_tracker(tmp_path: Path) -> None:
    from peerix.cli.main import build_parser
    from peerix.daemon.config import load

    evaluated = evaluate('{ services.peerix = { enable = true; '
                         'trackerUrls = [ "http://t1:12305" "http://t2:12305" ]; }; }')
    _, settings = command(evaluated, "peerix")
    assert evaluated["failed"] == [] and settings["tracker"] == ["http://t1:12305", "http://t2:12305"]
    file = as_toml(settings, tmp_path / "peerix.toml")
    assert load(build_parser().parse_args(["serve", "--config", str(file)])).tracker == ("http://t1:12305",
                                                                                        "http://t2:12305")
    alone = evaluate("{ services.peerix = { enable = true; lan.enable = false; }; }")
    assert command(alone, "peerix")[1]["tracker"] == "none" and "cannot find any peer" in alone["failed"][0]


def test_the_module_hands_tokens_over_as_credentials_and_serves_tls(tmp_path: Path) -> None:
    """A closed fleet on NixOS: the daemon's tracker and fleet tokens and the tracker's TLS key reach the
    services as systemd credentials; the command lines they make are read by the real parsers."""
    from peerix.cli.main import build_parser
    from peerix.daemon.config import load
    from tracker.cli import build_parser as tracker_parser
    from tracker.config import load as tracker_load

    evaluated = evaluate('{ services.peerix = { enable = true; trackerUrls = [ "https://tracker:12305" ]; '
                         'trackerTokenFile = "/run/keys/tracker.token"; fleetTokenFile = "/run/keys/fleet.token"; '
                         'trackerCaFile = "/etc/peerix/ca.pem"; settings.peers = "fleet"; }; '
                         'services.peerix-tracker = { enable = true; tls = { certFile = "/etc/tls/chain.pem"; '
                         'keyFile = "/etc/tls/key.pem"; }; }; }')
    assert evaluated["failed"] == []
    services = evaluated["config"]["systemd"]["services"]
    assert services["peerix"]["serviceConfig"]["LoadCredential"] == [
        "host-key:/var/lib/peerix-key/host.key", "fleet-token:/run/keys/fleet.token",
        "tracker-token:/run/keys/tracker.token"]
    assert services["peerix-tracker"]["serviceConfig"]["LoadCredential"] == [
        "tls-cert:/etc/tls/chain.pem", "tls-key:/etc/tls/key.pem"]

    credentials = tmp_path / "credentials"  # what systemd's %d names, with files where the parsers read them
    credentials.mkdir()
    for name, mode in (("tls-cert", 0o644), ("tls-key", 0o600)):
        (credentials / name).write_text("PEM\n")
        (credentials / name).chmod(mode)

    def parsed(service: str, parser, loader):  # noqa: ANN001, ANN202
        args, settings = command(evaluated, service)
        args[args.index("--config") + 1] = str(as_toml(settings, tmp_path / f"{service}.toml"))
        return loader(parser().parse_args([arg.replace("%d", str(credentials)) for arg in args[1:]]))

    daemon = parsed("peerix", build_parser, load)
    assert (daemon.tracker_token_file, daemon.fleet_token_file) == (credentials / "tracker-token",
                                                                   credentials / "fleet-token")
    assert daemon.tracker_ca_file == Path("/etc/peerix/ca.pem") and daemon.peers == "fleet"
    tracker = parsed("peerix-tracker", tracker_parser, tracker_load)
    assert (tracker.tls_cert, tracker.tls_key) == (credentials / "tls-cert", credentials / "tls-key")


@pytest.mark.parametrize("settings, message", [
    ('services.peerix-tracker = { enable = true; tls.certFile = "/etc/tls/chain.pem"; };',
     "give both certFile and keyFile"),
    ('services.peerix-tracker = { enable = true; tls = { certFile = "/etc/c.pem"; keyFile = "/nix/store/k"; }; };',
     "tls.keyFile must not be in the Nix store"),
    ('services.peerix-tracker = { enable = true; settings.tls_key = "/etc/tls/key.pem"; };',
     "settings.tls_key is set by services.peerix-tracker.tls.keyFile"),
    ('services.peerix = { enable = true; fleetTokenFile = "/nix/store/x-fleet.token"; };',
     "fleetTokenFile must not be in the Nix store"),
    ('services.peerix = { enable = true; settings.fleet_token_file = "/etc/fleet.token"; };',
     "settings.fleet_token_file is set by services.peerix.fleetTokenFile"),
])
def test_the_module_refuses_secrets_in_the_store_and_half_a_tls_setting(settings: str, message: str) -> None:
    failed = evaluate(f"{{ {settings} }}")["failed"]
    assert len(failed) == 1 and message in failed[0], failed


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
