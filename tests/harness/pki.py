"""Certificates and keys of the harness's control plane, made with the openssl command line tool.

A private CA signs the API server's serving certificate (for 127.0.0.1 and ``localhost``) and the admin's
client certificate (group ``system:masters``); an RSA key pair signs service-account tokens.
"""

from __future__ import annotations

from pathlib import Path

from common import run

SERVER_SANS = ("DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
               "DNS:kubernetes.default.svc.cluster.local", "IP:127.0.0.1", "IP:10.96.0.1")


def _sign(pki: Path, name: str, subject: str, extensions: str) -> None:
    key, csr, crt, ext = (pki / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
    ext.write_text(extensions)
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", subject])
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"),
         "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-out", str(crt), "-days", "3650", "-sha256",
         "-extfile", str(ext)])
    csr.unlink()
    ext.unlink()


def make_pki(pki: Path) -> None:
    """Create CA, API server, admin and service-account keys under ``pki`` (once; kept across restarts)."""
    if (pki / "done").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"), "-days", "3650", "-sha256",
         "-subj", "/CN=mace-harness-ca", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    _sign(pki, "apiserver", "/CN=kube-apiserver",
          "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
          f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(SERVER_SANS)}\n")
    _sign(pki, "admin", "/O=system:masters/CN=mace-harness-admin",
          "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
          "extendedKeyUsage=clientAuth\n")
    run(["openssl", "genrsa", "-out", str(pki / "sa.key"), "2048"])
    run(["openssl", "rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub")])
    (pki / "done").write_text("")
