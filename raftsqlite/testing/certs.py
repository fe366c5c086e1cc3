"""Throw-away certificates for TLS tests and benchmarks, made with the ``openssl`` CLI into
a directory the caller owns (a pytest tmp dir). Never committed, valid for two days.

``make_ca(dir, "ca")`` -> (cert, key) paths; ``make_cert(dir, "node", ca)`` -> (cert, key)
signed by that CA, with SAN ``IP:127.0.0.1, DNS:localhost`` and usable for both server
and client authentication (one certificate per node serves the HTTP API, the Raft port
and its own outgoing calls, as in the cluster tests).
"""
import os
import shutil
import ssl
import subprocess

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def _run(*args, cwd):
    r = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {r.stderr.strip()}")


def make_ca(d, name="ca"):
    cert, key = os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return cert, key


def make_cert(d, name, ca, *, san="IP:127.0.0.1,DNS:localhost"):
    ca_cert, ca_key = ca
    cert, key = os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")
    csr, ext = os.path.join(d, name + ".csr"), os.path.join(d, name + ".ext")
    with open(ext, "w") as f:
        f.write(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\n")
    _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", csr, "-subj", f"/CN={name}", cwd=d)
    _run("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext, cwd=d)
    return cert, key


def client_context(ca_cert, cert=None, key=None):
    """An ``ssl.SSLContext`` for a test client: trusts ``ca_cert``, presents ``cert``."""
    c = ssl.create_default_context(cafile=ca_cert)
    if cert:
        c.load_cert_chain(cert, key)
    return c


class TLSFiles:
    """One CA, one certificate for every node (SAN 127.0.0.1), one client certificate,
    and a second, unrelated CA with a certificate of its own (a rogue node)."""

    def __init__(self, d):
        self.dir = d
        self.ca = make_ca(d, "ca")
        self.node = make_cert(d, "node", self.ca)
        self.client = make_cert(d, "client", self.ca)
        self.rogue_ca = make_ca(d, "rogue-ca")
        self.rogue = make_cert(d, "rogue", self.rogue_ca)

    def node_flags(self, *, http=True, node=True, verify_client=True, rogue=False,
                   rogue_cert=False):
        """CLI flags for a node: TLS on the HTTP API and/or between nodes, mutual TLS
        with ``verify_client``; ``rogue`` uses the other CA's files; ``rogue_cert`` only
        the other CA's certificate (it trusts the right CA, so only the peer refuses)."""
        ca = self.rogue_ca[0] if rogue else self.ca[0]
        cert, key = self.rogue if rogue or rogue_cert else self.node
        f = []
        if http:
            f += ["-http-cert", cert, "-http-key", key, "-http-ca-cert", ca]
            if verify_client:
                f.append("-http-verify-client")
        if node:
            f += ["-node-cert", cert, "-node-key", key, "-node-ca-cert", ca]
            if verify_client:
                f.append("-node-verify-client")
        return f

    def client_context(self, with_cert=True):
        return client_context(self.ca[0], *(self.client if with_cert else (None, None)))
