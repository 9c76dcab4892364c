"""Who may read: the token in ``$SKY_MINI_HOME/http.token`` and the loopback Host check.

On a loopback address anyone on this machine may read (as with the CLI's files), but the
``Host`` header must name the loopback listener itself, so a web page on another origin that
rebinds its DNS name to 127.0.0.1 gets 403. On any other address every request needs the
token: ``Authorization: Bearer TOKEN``, or the cookie the ``/?token=TOKEN`` login sets.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import os
import secrets
import stat

TOKEN_FILE = "http.token"
TOKEN_BYTES = 32
COOKIE_NAME = "sky_mini_token"
LOOPBACK_NAMES = ("localhost", "localhost.")


def token_path(home: str) -> str:
    return os.path.join(home, TOKEN_FILE)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for 0.0.0.0 and every other name."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_token(home: str) -> tuple[str, str | None]:
    """Read the token, creating it (0600, never through a symlink) if missing.

    Returns (token, warning): a token file others could read is tightened to 0600 and a
    warning says so.
    """
    path = token_path(home)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    warning = None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
            warning = f"{path} was readable by others ({stat.filemode(st.st_mode)}): set to 0600"
        token = os.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if len(token) < 16:
        raise ValueError(f"{path} holds no usable token (under 16 characters); delete it")
    return token, warning


def same_token(offered: str | None, token: str) -> bool:
    if not offered:
        return False
    return hmac.compare_digest(offered.encode("utf-8", "replace"), token.encode())


def bearer_of(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def cookie_of(header: str | None) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE_NAME:
            return value
    return None


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """Host header values a loopback listener answers to (lower case)."""
    names = {"127.0.0.1", "localhost", "[::1]", host.lower()}
    if ":" in host and not host.startswith("["):
        names.add(f"[{host.lower()}]")
    return frozenset(f"{name}:{port}" for name in names) | (
        frozenset(names) if port == 80 else frozenset()
    )


class Gate:
    """Decides, per request, 'ok', 'bad_host' (403) or 'unauthorized' (401)."""

    def __init__(self, host: str, port: int, token: str | None) -> None:
        self.loopback = is_loopback(host)
        self.hosts = allowed_hosts(host, port) if self.loopback else frozenset()
        self.token = token

    @property
    def needs_token(self) -> bool:
        return not self.loopback

    def check(self, host_header: str | None, authorization: str | None, cookie: str | None) -> str:
        if self.loopback and (host_header or "").strip().lower() not in self.hosts:
            return "bad_host"
        if self.needs_token:
            token = self.token or ""
            if not (
                same_token(bearer_of(authorization), token) or same_token(cookie_of(cookie), token)
            ):
                return "unauthorized"
        return "ok"
