"""Drive the real Nix CLI from tests (Debian's nix-bin 2.8 or anything newer)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).parent


def why_no_nix() -> str | None:
    """None when tests can build with Nix here, else the reason they cannot."""
    if not shutil.which("nix"):
        return "nix is not installed (scripts/dev setup installs Debian's nix-bin)"
    if os.geteuid() != 0 and not os.access("/nix/store", os.W_OK):
        return "building needs root or a writable /nix/store (single-user Nix)"
    return None


def run(*args: str, check: bool = True, input: bytes | None = None, cwd: Path | None = None
        ) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, input=input, timeout=600, cwd=cwd)
    if check and result.returncode != 0:
        stderr = result.stderr.decode(errors="replace")
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{stderr}")
    return result


def nix(*args: str, **kw) -> subprocess.CompletedProcess:
    return run("nix", "--extra-experimental-features", "nix-command", *args, **kw)


def build(expr_file: Path, **argstr: str) -> Path:
    """Build in the root store and return the output path."""
    extra = [a for name, value in argstr.items() for a in ("--argstr", name, value)]
    out = run("nix-build", str(expr_file), "--no-out-link", *extra).stdout.decode().strip()
    return Path(out)


def closure_of(path: Path, store: str | None = None) -> list[str]:
    return sorted(path_info(path, store=store, recursive=True))


def path_info(*paths: Path | str, store: str | None = None, recursive: bool = False) -> dict[str, dict]:
    """`nix path-info --json` as {path: info} for both the 2.8 array form and the newer object form."""
    args = ["path-info", "--json"] + (["-r"] if recursive else []) + (["--store", store] if store else [])
    data = json.loads(nix(*args, *map(str, paths)).stdout)
    if isinstance(data, list):
        return {entry["path"]: entry for entry in data}
    return data


def copy_to(root: Path, *paths: Path | str) -> None:
    """Give a chroot store the paths (and their closure) from the root store, signatures unchecked."""
    nix("copy", "--no-check-sigs", "--to", str(root), *map(str, paths))


def hash_part(path: Path | str) -> str:
    return Path(path).name[:32]
