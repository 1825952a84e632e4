"""Certificates for tests, made with Debian's openssl: a CA, and server certificates it signs."""

import shutil
import subprocess
from pathlib import Path


def why_no_openssl() -> str | None:
    return None if shutil.which("openssl") else "needs openssl"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


class CertificateAuthority:
    """A CA of its own in `directory`: `cert` is what clients trust."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.key, self.cert = directory / f"{name}.key", directory / f"{name}.pem"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(self.key), "-out", str(self.cert), "-days", "2", "-subj", f"/CN={name}",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def issue(self, name: str, *alt_names: str) -> tuple[Path, Path]:
        """A server certificate for `alt_names` (e.g. "DNS:localhost", "IP:127.0.0.1"): its chain and key (0600)."""
        key, request, cert = (self.directory / f"{name}.{suffix}" for suffix in ("key", "csr", "pem"))
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                 "-out", str(request), "-subj", f"/CN={name}")
        extensions = self.directory / f"{name}.ext"
        extensions.write_text(f"subjectAltName={','.join(alt_names)}\nextendedKeyUsage=serverAuth\n"
                              "basicConstraints=CA:FALSE\n")
        _openssl("x509", "-req", "-in", str(request), "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions))
        key.chmod(0o600)
        return cert, key
