"""What keeps a run private to the user who started it, on a host shared with other users.

Three things, each used by every component that writes or listens:

* **Private files.**  Everything faasx writes in a run directory -- logs, submit scripts and the
  jobs' stdout/stderr, credentials, the memo store -- is created with its final mode: directories
  0700 (``private_dir``), files 0600 (``open_private``, ``PrivateFileHandler``, ``private_file``).
  The mode is given to ``open``/``mkdir`` themselves, so no file is ever readable by others, not
  even for an instant, whatever the process's umask; a umask can only remove bits, and a umask that
  removes the owner's own bits is corrected on the new descriptor before anything is written.  A run
  directory that already exists and belongs to another user is refused (another user could have
  made it in ``/tmp`` beforehand to read what we put there).

* **Credentials** (``create_keys``, ``manager_credentials``).  Per run, in ``<logdir>/certs`` (0700):
  the run token and, when the run is encrypted (the default), CurveZMQ key pairs for the manager
  port.  Managers are told the directory on their command line (``--cert-dir``) and read the token
  and keys from it -- a shared file system on clusters, as with Parsl's HTEX -- so no secret is in
  ``ps``, a submit script or a log.  The interchange reads its keys from the same place.

* **CurveZMQ on the manager port** (``configure_server``, ``configure_client``), on every address,
  loopback and the same-host ipc socket included: traffic is encrypted and a ZAP handler admits only
  clients holding the run's client key, so a peer without it cannot complete the handshake, let
  alone register or receive tasks.  The ipc socket itself lives in the 0700 run directory (or, when
  that path is too long for a Unix socket, in a fresh 0700 directory from ``mkdtemp``:
  ``ipc_socket_path``), so other users cannot even connect to it.
"""
from __future__ import annotations

import logging
import os
import secrets
import stat
import tempfile
from typing import IO, Optional, Tuple

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
UNIX_PATH_MAX = 107          # sun_path is 108 bytes on Linux, NUL included
TOKEN_FILE = "token"


# ---- private files -------------------------------------------------------------------------------
def private_dir(path: str, tighten: bool = True) -> str:
    """Create ``path`` (and missing parents) as a 0700 directory owned by us, or check an existing one.

    Parents that did not exist are made 0700 too (``runinfo/`` above a run directory holds only run
    directories).  An existing directory of ours is brought to 0700; one owned by another user is
    refused with ``PermissionError``: whoever owns it can read everything we would write there.
    ``tighten=False`` leaves an existing directory as it is (a user's own ``run_dir``, which may be
    their project directory: the private directories go inside it)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if parent != path and not os.path.isdir(parent):
        private_dir(parent)
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileExistsError:
        pass
    st = os.stat(path) if not tighten else os.lstat(path)   # a user's own run_dir may be a symlink
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"faasx: {path} exists and is not a directory (a run directory must be one)")
    if st.st_uid != os.geteuid():
        raise PermissionError(f"faasx: the run directory {path} belongs to uid {st.st_uid}, not to you "
                              f"(uid {os.geteuid()}): its owner could read the run's logs and credentials. "
                              "Fix: choose a run_dir of your own.")
    if tighten and stat.S_IMODE(st.st_mode) != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)   # ours but too open (made earlier) or missing owner bits (umask)
    return path


def _open_private_fd(path: str, flags: int) -> int:
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise PermissionError(f"faasx: {path} belongs to uid {st.st_uid}, not to you; refusing to write it")
        if stat.S_IMODE(st.st_mode) != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)   # a file from an earlier run, or a umask without owner bits
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private(path: str, mode: str = "a") -> IO:
    """``open(path, mode)`` for writing (``"a"``, ``"ab"``, ``"w"``, ``"wb"``), creating the file 0600."""
    flags = os.O_WRONLY | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    return os.fdopen(_open_private_fd(path, flags), mode)


def private_file(path: str) -> str:
    """Make sure ``path`` exists as a 0600 file of ours (for files others open later: SQLite, a
    scheduler writing a job's output).  Its contents are kept."""
    os.close(_open_private_fd(path, os.O_WRONLY))
    return path


class PrivateFileHandler(logging.FileHandler):
    """``logging.FileHandler`` whose file is created 0600 (the standard one leaves it to the umask)."""

    def _open(self):
        return open_private(self.baseFilename, "a" if "a" in self.mode else "w")


# ---- credentials -----------------------------------------------------------------------------------
def _write_cert(path: str, public: bytes, secret: Optional[bytes] = None) -> None:
    """A key file in ZeroMQ's certificate format (what ``zmq.auth.load_certificate`` reads), 0600."""
    with open_private(path, "w") as f:
        f.write("#   faasx run key: do not share\nmetadata\ncurve\n")
        f.write(f'    public-key = "{public.decode()}"\n')
        if secret is not None:
            f.write(f'    secret-key = "{secret.decode()}"\n')


def create_keys(logdir: str, token: Optional[str] = None, encrypted: bool = True) -> str:
    """Make the run's credentials in ``<logdir>/certs`` and return that directory.

    ``token`` (a fresh one if None) goes to ``certs/token``; with ``encrypted`` a server and a client
    CurveZMQ key pair are made too (``server.key``, ``server.key_secret``, ``client.key``,
    ``client.key_secret``, and ``allowed/client.key`` for the ZAP allow-list)."""
    import zmq
    cert_dir = private_dir(os.path.join(logdir, "certs"))
    with open_private(os.path.join(cert_dir, TOKEN_FILE), "w") as f:
        f.write(token if token is not None else secrets.token_hex(16))
    if encrypted:
        allowed = private_dir(os.path.join(cert_dir, "allowed"))
        for name in ("server", "client"):
            public, secret = zmq.curve_keypair()
            _write_cert(os.path.join(cert_dir, f"{name}.key"), public)
            _write_cert(os.path.join(cert_dir, f"{name}.key_secret"), public, secret)
            if name == "client":
                _write_cert(os.path.join(allowed, "client.key"), public)
    return cert_dir


def read_token(cert_dir: Optional[str]) -> str:
    """The run token from ``cert_dir`` ("" when there is none: the interchange will refuse us)."""
    if not cert_dir:
        return ""
    try:
        with open(os.path.join(cert_dir, TOKEN_FILE)) as f:
            return f.read().strip()
    except OSError:
        return ""


def manager_credentials(cert_dir: Optional[str]) -> Tuple[str, bool]:
    """(token, whether CurveZMQ client keys are there) for a manager given ``--cert-dir``."""
    has_keys = bool(cert_dir) and os.path.exists(os.path.join(cert_dir, "client.key_secret"))
    return read_token(cert_dir), has_keys


# ---- CurveZMQ --------------------------------------------------------------------------------------
def configure_server(ctx, sock, cert_dir: str):
    """Make ``sock`` a CURVE server admitting only the run's client key; returns the ZAP thread."""
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=os.path.join(cert_dir, "allowed"))
    public, secret = zmq.auth.load_certificate(os.path.join(cert_dir, "server.key_secret"))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


def configure_client(sock, cert_dir: str) -> None:
    import zmq.auth
    server_public, _ = zmq.auth.load_certificate(os.path.join(cert_dir, "server.key"))
    public, secret = zmq.auth.load_certificate(os.path.join(cert_dir, "client.key_secret"))
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret


# ---- the same-host endpoint ------------------------------------------------------------------------
def ipc_socket_path(logdir: str, name: str) -> Tuple[str, Optional[str]]:
    """Where the interchange's ipc socket goes: (path, a directory to remove at exit or None).

    In the 0700 ``logdir`` when the path fits in a Unix socket address; otherwise in a new 0700
    directory under the system's temporary directory (``mkdtemp`` makes it 0700 and unguessable)."""
    path = os.path.join(os.path.abspath(logdir), name)
    if len(path.encode()) <= UNIX_PATH_MAX:
        return path, None
    own = tempfile.mkdtemp(prefix="faasx-ipc-")
    return os.path.join(own, name), own
