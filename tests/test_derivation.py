"""Derivations and their hash modulo, which keys the realisations of content-addressed derivations,
checked against the ids real Nix 2.8 writes in its Realisations table."""

import sqlite3
from pathlib import Path

import pytest

from peerix.nix.derivation import Derivation, DerivationError, hash_modulo

from conftest import requires_nix
from nixtools import HERE, nix, run


@requires_nix
def test_hash_modulo_is_the_id_nix_gives_each_derivation_output(tmp_path: Path) -> None:
    """A content-addressed derivation with a content-addressed, an input-addressed and a fixed-output
    input: Nix 2.8 records a realisation for each (and for the resolved top one), by hash modulo."""
    store = tmp_path / "store"
    nix("--extra-experimental-features", "nix-command ca-derivations", "build", "--store", str(store), "-f",
        str(HERE / "nix" / "ca-deps.nix"), "--argstr", "seed", "derivation-test", "--no-link",
        "--option", "sandbox-paths", "/bin /usr /lib /lib64")
    with sqlite3.connect(store / "nix/var/nix/db/db.sqlite") as db:
        recorded = {f"{h}!{o}" for h, o in db.execute("SELECT drvPath, outputName FROM Realisations")}

    def read(path: str) -> Derivation:
        return Derivation.parse((store / path.lstrip("/")).read_text())

    drvs = sorted(p for p in (store / "nix/store").iterdir() if p.name.endswith(".drv"))
    assert len(drvs) == 5
    computed = {f"sha256:{h}!{output}" for drv in drvs
                for output, h in hash_modulo(f"/nix/store/{drv.name}", read).items()}
    assert computed == recorded


@requires_nix
def test_derivations_unparse_to_their_own_text(closure: Path) -> None:
    drv = run("nix-store", "-q", "--deriver", str(closure)).stdout.decode().strip()
    for path in run("nix-store", "-qR", drv).stdout.decode().split():
        if path.endswith(".drv"):
            text = Path(path).read_text()
            assert Derivation.parse(text).unparse(mask_outputs=False) == text


@pytest.mark.parametrize("text", ["", "Derive(", 'Derive([("out","","","")],[],[],"x","y",[],[]) junk',
                                  'Derive([("out","")],[],[],"x","y",[],[])', "Derive" + "(" * 5000, "x" * 100])
def test_bad_derivations_are_refused(text: str) -> None:
    with pytest.raises(DerivationError):
        Derivation.parse(text)
