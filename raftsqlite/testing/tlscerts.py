"""Throw-away certificates for tests and benchmarks, made with the system's ``openssl``.

``make_certs(dir)`` writes a CA and, signed by it, a certificate for 127.0.0.1/localhost
usable as server and client (one is enough for every node on one machine), plus a second,
unrelated CA (``other-ca.crt``) to prove a mismatch is refused. Nothing is committed:
tests create them in a tmp dir.
"""
import os
import shutil
import subprocess

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _run(args, cwd):
    subprocess.run([OPENSSL] + args, cwd=cwd, check=True, timeout=30,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ca(d, name):
    _run(["req", "-x509", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
          "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)


def _leaf(d, ca, name, san="IP:127.0.0.1,DNS:localhost"):
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n"
                "basicConstraints=CA:FALSE\n")
    _run(["req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"], d)
    _run(["x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
          "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext"], d)


def make_certs(d) -> dict:
    """-> paths: ca, cert, key (signed by ca, SAN 127.0.0.1), other_ca, other_cert,
    other_key (signed by other_ca)."""
    d = str(d)
    os.makedirs(d, exist_ok=True)
    _ca(d, "ca")
    _leaf(d, "ca", "node")
    _ca(d, "other-ca")
    _leaf(d, "other-ca", "other")
    p = lambda n: os.path.join(d, n)   # noqa: E731
    return {"ca": p("ca.crt"), "cert": p("node.crt"), "key": p("node.key"),
            "other_ca": p("other-ca.crt"), "other_cert": p("other.crt"),
            "other_key": p("other.key")}
