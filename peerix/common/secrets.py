"""Secret files: written 0600 without a window where others could read them, refused when exposed."""

import logging
import os
import stat
from pathlib import Path

from ..nix.signing import KeyFormatError, SecretKey

log = logging.getLogger(__name__)


class SecretFileError(Exception):
    pass


def write_secret(path: Path, text: str, overwrite: bool = False) -> None:
    """Write a new secret file (0600), making its directory (0700) if it is missing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if overwrite else os.O_EXCL)
    if not path.parent.is_dir():
        try:
            path.parent.mkdir(mode=0o700, parents=True)
        except OSError as error:
            raise SecretFileError(f"cannot make the directory of {path}: {error.strerror}") from None
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise SecretFileError(f"{path} exists; refusing to overwrite a secret") from None
    except OSError as error:
        raise SecretFileError(f"cannot write {path}: {error.strerror}") from None
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)
        file.write(text)


def add_token(path: Path, token: str) -> None:
    """Append a token to a token file (one a line), made 0600 when new; an exposed one is refused."""
    if not path.exists():
        return write_secret(path, token + "\n")
    text = read_secret(path)
    try:
        with open(path, "a") as file:
            file.write(("" if not text or text.endswith("\n") else "\n") + token + "\n")
    except OSError as error:
        raise SecretFileError(f"cannot write {path}: {error.strerror}") from None


def read_secret(path: Path) -> str:
    """Read a secret, refusing a world-readable file (as ssh does) and warning on a group-readable one."""
    try:
        with open(path) as file:
            mode = os.fstat(file.fileno()).st_mode
            if mode & stat.S_IROTH:
                raise SecretFileError(f"{path} is readable by everyone; run: chmod 600 {path}")
            if mode & stat.S_IRGRP:
                log.warning("secret file is group-readable path=%s mode=%o", path, stat.S_IMODE(mode))
            return file.read()
    except OSError as error:
        raise SecretFileError(f"cannot read {path}: {error.strerror}") from None


def read_token(path: Path) -> str:
    """The token in a token file: its first line that is neither blank nor a `#` comment.

    The tracker's token files hold one token a line (a rotation lists the new one beside the old), so
    the same file can serve the daemon, which sends the first."""
    return read_tokens(path)[0]


def read_tokens(path: Path) -> list[str]:
    """Every token in a token file, one a line, blank lines and `#` comments skipped; at least one."""
    tokens = []
    for line in read_secret(path).splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            if not all(" " <= char <= "~" for char in token):
                raise SecretFileError(f"{path}: the token has characters an HTTP header cannot carry")
            tokens.append(token)
    if not tokens:
        raise SecretFileError(f"{path} holds no token (one a line; blank lines and # comments are skipped)")
    return tokens


def load_secret_key(path: Path) -> SecretKey:
    """A Nix secret key file, with the file named in any error."""
    try:
        return SecretKey.parse(read_secret(path))
    except KeyFormatError as error:
        raise SecretFileError(f"{path}: {error}") from None
