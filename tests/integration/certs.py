"""Throwaway TLS material for the auth/TLS tests, made with the openssl CLI at test time.

make_pki(dir, name) writes, under dir:
  <name>-ca.pem / .key          a CA
  <name>-server.pem / .key      a server certificate for CN=localhost, SAN DNS:localhost and
                                IP:127.0.0.1, signed by that CA
  <name>-client-<cn>.pem / .key client certificates (CN=<cn>) signed by that CA, for each cn in
                                clients
Keys are P-256 (fast to make) and mode 0600, as libpq requires of a client key.
"""

import os
import subprocess
from pathlib import Path


def _openssl(args, cwd):
    p = subprocess.run(["openssl"] + args, cwd=str(cwd), capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")


def _key(path, cwd):
    _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
              str(path)], cwd)
    os.chmod(path, 0o600)


def _sign(cwd, ca, csr, out, ext_lines, serial):
    ext = Path(cwd) / f"{Path(out).stem}.ext"
    ext.write_text("\n".join(ext_lines) + "\n")
    _openssl(["x509", "-req", "-in", str(csr), "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
              "-set_serial", str(serial), "-days", "3", "-sha256", "-out", str(out), "-extfile",
              str(ext)], cwd)


class Pki:
    def __init__(self, d, name):
        self.dir = Path(d)
        self.name = name
        self.ca = self.dir / f"{name}-ca.pem"
        self.server_cert = self.dir / f"{name}-server.pem"
        self.server_key = self.dir / f"{name}-server.key"

    def client_cert(self, cn):
        return self.dir / f"{self.name}-client-{cn}.pem"

    def client_key(self, cn):
        return self.dir / f"{self.name}-client-{cn}.key"


def make_pki(d, name="test", clients=("app",)):
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    pki = Pki(d, name)
    ca = d / f"{name}-ca"
    _key(f"{ca}.key", d)
    _openssl(["req", "-x509", "-new", "-key", f"{ca}.key", "-out", f"{ca}.pem", "-days", "3",
              "-sha256", "-subj", f"/CN=sluice test CA {name}", "-addext",
              "basicConstraints=critical,CA:TRUE", "-addext",
              "keyUsage=critical,keyCertSign,cRLSign"], d)
    serial = 1000
    _key(pki.server_key, d)
    csr = d / f"{name}-server.csr"
    _openssl(["req", "-new", "-key", str(pki.server_key), "-out", str(csr), "-subj",
              "/CN=localhost"], d)
    _sign(d, ca, csr, pki.server_cert,
          ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
           "extendedKeyUsage=serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1"], serial)
    for cn in clients:
        serial += 1
        key, cert = pki.client_key(cn), pki.client_cert(cn)
        _key(key, d)
        csr = d / f"{name}-client-{cn}.csr"
        _openssl(["req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={cn}"], d)
        _sign(d, ca, csr, cert,
              ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature",
               "extendedKeyUsage=clientAuth"], serial)
    return pki
