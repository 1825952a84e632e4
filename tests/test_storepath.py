import pytest

from peerix.nix.storepath import StorePath, is_hash_part

HASH = "0jhgxrl38wfj801ik5d7xhris8ri658m"


def test_parse_and_format() -> None:
    path = StorePath.parse(f"/nix/store/{HASH}-hello-2.12.1")
    assert (path.hash_part, path.name) == (HASH, "hello-2.12.1")
    assert path.full() == f"/nix/store/{HASH}-hello-2.12.1"
    assert StorePath.parse(f"/other/store/{HASH}-x", "/other/store/").full("/other/store") == f"/other/store/{HASH}-x"


@pytest.mark.parametrize("text", [
    HASH, HASH[:-1] + "e", HASH.upper(), "../" + HASH[3:], HASH + "0", "0" * 31, "%2e%2e" + HASH[6:],
])
def test_hash_part_validation(text: str) -> None:
    assert is_hash_part(text) is (text == HASH)


@pytest.mark.parametrize("basename", [
    HASH, f"{HASH}-", f"{HASH}-a/b", f"{HASH}-..", f"{HASH}-.", f"{HASH}-ä", f"{HASH}-a b",
    f"{HASH}-" + "x" * 212, f"{HASH[:-1]}e-x", f"{HASH}_x",
])
def test_bad_basenames(basename: str) -> None:
    with pytest.raises(ValueError):
        StorePath.from_basename(basename)


def test_outside_store_dir() -> None:
    with pytest.raises(ValueError):
        StorePath.parse(f"/nix/storex/{HASH}-x")
    with pytest.raises(ValueError):
        StorePath.parse(f"/nix/store/../store/{HASH}-x")
