"""CurveZMQ for the interchange's manager port.

When the executor's managers connect over anything but loopback, the manager port is a CURVE
server: traffic is encrypted, and a ZAP handler admits only clients holding the run's client key.
Keys are made per run in ``<logdir>/certs`` (mode 0700); the manager reads them from the same path
(a shared file system on clusters, as with Parsl's HTEX).  A manager without the key cannot even
complete the handshake, so it can neither register nor receive tasks.
"""
from __future__ import annotations

import os

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


def create_keys(logdir: str) -> str:
    cert_dir = os.path.join(logdir, "certs")
    os.makedirs(cert_dir, mode=0o700, exist_ok=True)
    os.chmod(cert_dir, 0o700)
    allowed = os.path.join(cert_dir, "allowed")
    os.makedirs(allowed, mode=0o700, exist_ok=True)
    zmq.auth.create_certificates(cert_dir, "server")
    client_public, _ = zmq.auth.create_certificates(cert_dir, "client")
    with open(client_public) as src, open(os.path.join(allowed, "client.key"), "w") as dst:
        dst.write(src.read())
    for name in os.listdir(cert_dir):
        path = os.path.join(cert_dir, name)
        if os.path.isfile(path):
            os.chmod(path, 0o600)
    return cert_dir


def configure_server(ctx: zmq.Context, sock: zmq.Socket, cert_dir: str) -> ThreadAuthenticator:
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=os.path.join(cert_dir, "allowed"))
    public, secret = zmq.auth.load_certificate(os.path.join(cert_dir, "server.key_secret"))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


def configure_client(sock: zmq.Socket, cert_dir: str) -> None:
    server_public, _ = zmq.auth.load_certificate(os.path.join(cert_dir, "server.key"))
    public, secret = zmq.auth.load_certificate(os.path.join(cert_dir, "client.key_secret"))
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret
