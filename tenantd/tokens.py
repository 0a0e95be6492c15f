"""Bearer tokens: who a request on the HTTP or gRPC front door is from, under ``--auth keys``.

The operator issues a token with ``tenantd keys add NAME`` (beside the CurveZMQ key of
:mod:`tenantd.auth`): a 256-bit random secret written once for its holder to
``<state-dir>/keys/issued/<role>s/NAME.token`` (mode 0600, to hand over and delete), while the daemon
keeps only its SHA-256 in ``<state-dir>/keys/tokens/<role>s/NAME.sha256``. :class:`TokenRing` reads
those hashes and answers who holds a presented token, comparing in constant time against every
registered hash. ``tenantd keys remove`` deletes both files, and the same reload that re-reads the
CurveZMQ keys (SIGHUP, ``tenantctl keys reload``) re-reads the tokens: a removed token is refused
from the next request on.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from tenantd.auth import ISSUED_DIR, KEYS_DIR, ROLE_DIRS, AuthConfigError, Identity, _check_name, _check_role

log = logging.getLogger("tenantd.auth")

TOKENS_DIR = "tokens"
TOKEN_SUFFIX = ".token"
HASH_SUFFIX = ".sha256"
TOKEN_PREFIX = "tnd_"  # so that a leaked token is recognisable in logs and secret scanners
TOKEN_BYTES = 32


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new file of mode 0600, atomically (it never exists half written)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def issue_token(state_dir: Path | str, name: str, role: str = "tenant") -> Path:
    """Issue a new token for ``name`` (replacing any it had): register its hash and return the path of
    the token file for its holder."""
    checked = _check_role(role)
    _check_name(name, checked)
    keys = Path(state_dir) / KEYS_DIR
    issued = keys / ISSUED_DIR / ROLE_DIRS[checked]
    hashes = keys / TOKENS_DIR / ROLE_DIRS[checked]
    for folder in (issued, hashes):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    token_file = issued / f"{name}{TOKEN_SUFFIX}"
    # The holder's file first: a hash is never registered without its token existing somewhere.
    _write_private(token_file, token + "\n")
    _write_private(hashes / f"{name}{HASH_SUFFIX}", token_hash(token).hex() + "\n")
    log.info("issued a bearer token for %s %s: %s", checked, name, token_file)
    return token_file


def remove_token(state_dir: Path | str, name: str, role: str = "tenant") -> bool:
    """Withdraw ``name``'s token (and its issued file); False if it had none."""
    checked = _check_role(role)
    _check_name(name, checked)
    keys = Path(state_dir) / KEYS_DIR
    (keys / ISSUED_DIR / ROLE_DIRS[checked] / f"{name}{TOKEN_SUFFIX}").unlink(missing_ok=True)
    try:
        (keys / TOKENS_DIR / ROLE_DIRS[checked] / f"{name}{HASH_SUFFIX}").unlink()
    except FileNotFoundError:
        return False
    return True


def read_token(path: Path | str) -> str:
    """The token in a file ``issue_token`` wrote (for clients and tests)."""
    return Path(path).read_text(encoding="ascii").strip()


def _read_hashes(keys_dir: Path) -> list[tuple[bytes, Identity]]:
    found: list[tuple[bytes, Identity]] = []
    for role, folder in ROLE_DIRS.items():
        directory = keys_dir / TOKENS_DIR / folder
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.name.startswith(".") or not path.name.endswith(HASH_SUFFIX):
                continue
            name = path.name[: -len(HASH_SUFFIX)]
            try:
                _check_name(name, role)
                digest = bytes.fromhex(path.read_text(encoding="ascii").strip())
            except (ValueError, UnicodeDecodeError, AuthConfigError) as exc:
                raise AuthConfigError(f"token file {path} is not a token's SHA-256 in hex: {exc}") from None
            if len(digest) != hashlib.sha256().digest_size:
                raise AuthConfigError(f"token file {path} is not a token's SHA-256 in hex")
            found.append((digest, Identity(name, role)))
    return found


class TokenRing:
    """The registered token hashes of one state directory. :meth:`reload` swaps them in whole and
    keeps the old ones when the folder is invalid."""

    def __init__(self, state_dir: Path | str) -> None:
        self.keys_dir = Path(state_dir) / KEYS_DIR
        self._hashes: list[tuple[bytes, Identity]] = []

    @classmethod
    def load(cls, state_dir: Path | str) -> TokenRing:
        ring = cls(state_dir)
        ring.reload()
        return ring

    def reload(self) -> None:
        self._hashes = _read_hashes(self.keys_dir)
        log.info("loaded %d bearer token(s) from %s", len(self._hashes), self.keys_dir / TOKENS_DIR)

    def identity_for(self, token: str) -> Identity | None:
        """Who holds ``token``, or None. Every registered hash is compared, in constant time, so the
        time taken says nothing about which (or how much of one) matched."""
        digest = token_hash(token)
        found: Identity | None = None
        for registered, identity in self._hashes:
            if hmac.compare_digest(registered, digest):
                found = identity
        return found

    def __len__(self) -> int:
        return len(self._hashes)
