"""The linkage secret: 256 bits every party holds and the linkage unit never does.

It is only ever read from a file (named by a flag or ``BLOOMLINK_SECRET_FILE``), never taken
as a command-line value, and it is refused if it is short or readable by anyone but its owner.
Its repr is redacted so it cannot slip into a log or a traceback.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from protocol.errors import SecretError

__all__ = ["SECRET_BYTES", "SECRET_ENV_VAR", "LinkageSecret", "read_secret", "write_secret"]

SECRET_BYTES = 32
SECRET_ENV_VAR = "BLOOMLINK_SECRET_FILE"
_HEADER = "bloomlink-linkage-secret-v1"
_MAX_FILE_BYTES = 4096  # a real file is ~93 bytes; never read a huge file named by mistake
# 32 random bytes have about 30 distinct values; fewer than this means a hand-made secret
# (all zeros, a repeated pattern) whose CLKs anyone could reproduce. Chance by accident: below 2^-80.
_MIN_DISTINCT_BYTES = 12


class LinkageSecret:
    """The linkage secret's bytes, with a repr that never shows them.

    Not a dataclass on purpose: no generated repr, eq or hash that could expose or key on it.
    """

    __slots__ = ("_material",)

    def __init__(self, material: bytes) -> None:
        if len(material) < SECRET_BYTES:
            raise SecretError(f"a linkage secret must be at least {SECRET_BYTES * 8} bits")
        self._material = bytes(material)

    def material(self) -> bytes:
        """The raw bytes, for key derivation only."""
        return self._material

    def __repr__(self) -> str:
        return "LinkageSecret(<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        # Refuse to be pickled into a worker by accident; pass material() explicitly.
        raise TypeError("LinkageSecret cannot be serialised")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinkageSecret) and secrets.compare_digest(
            self._material, other._material
        )

    __hash__ = None  # type: ignore[assignment]  # never a dict or cache key


def write_secret(
    path: Path | str, *, token_bytes: Callable[[int], bytes] = secrets.token_bytes
) -> Path:
    """Create a new secret file readable only by its owner; never overwrite an existing one."""
    target = Path(path)
    material = token_bytes(SECRET_BYTES)
    text = f"{_HEADER}\n{material.hex()}\n".encode("ascii")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SecretError(
            "file exists already; a secret is never overwritten (choose a new path)",
            path=str(target),
        ) from None
    except OSError as error:
        raise SecretError(
            f"cannot create secret file: {error.strerror}", path=str(target)
        ) from None
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it
        written = os.write(fd, text)
        if written != len(text):
            raise OSError(errno.ENOSPC, "short write")
        os.fsync(fd)
    except OSError as error:
        # Never leave a partial secret behind: it would block the retry ("exists already").
        os.close(fd)
        target.unlink(missing_ok=True)
        raise SecretError(f"cannot write secret file: {error.strerror}", path=str(target)) from None
    os.close(fd)
    return target


# A run of the key alphabets (hex, base64, base64url; '/' is base64's too) this long is no
# file name anyone types: 32 random bytes are 64 hex or 43-44 base64 characters.
_KEY_RUN = re.compile(r"[0-9A-Za-z+/=_-]+")
_KEY_RUN_CHARS = 20


def _missing_part(text: str) -> str:
    """``text`` from its first path component that does not exist on ("" when all exist)."""
    for component in re.finditer(r"[^/]+", text):
        if not os.path.lexists(text[: component.end()]):
            return text[component.start() :]
    return ""


def _is_key_run(run: str) -> bool:
    letters = run.replace("/", "")
    if len(letters) < _KEY_RUN_CHARS:
        return False
    # A typed name ("linkage-secret-file") is one case with no digit; random key text of
    # this length has mixed case or a digit all but surely (below 2^-25 for 20 base64 chars).
    word_like = not any(char.isdigit() for char in letters) and (
        letters.lower() == letters or letters.upper() == letters
    )
    return not word_like


def _looks_like_key_material(text: str) -> bool:
    """A path that is no file and reads like key material (a long run of hex or base64, or
    the secret file's own text), not like a file name.

    Decided from the components that do not exist, so that neither a leading '/' (whose
    parent exists), a trailing '/' nor a '/' inside base64 can make the secret look like a
    path that is merely missing. A component with a dot is a file name (keys have none).
    """
    if _HEADER in text or "\n" in text:
        return True
    missing = _missing_part(text)
    # Dotted components break runs; '/' does not, as base64 may hold it anywhere.
    dotless = "/".join("\n" if "." in part else part for part in missing.split("/"))
    return any(_is_key_run(run.group()) for run in _KEY_RUN.finditer(dotless))


def read_secret(path: Path | str | None = None) -> LinkageSecret:
    """Read the secret from ``path`` (or the file named by ``BLOOMLINK_SECRET_FILE``)."""
    if path is None:
        env = os.environ.get(SECRET_ENV_VAR)
        if not env:
            raise SecretError(
                f"no secret file given: pass --secret-file PATH or set {SECRET_ENV_VAR}"
            )
        path = env
    source = Path(path)
    try:
        info = source.stat()
    except OSError as error:
        if _looks_like_key_material(str(path)):
            # Someone gave the secret itself where its file's path goes: never echo it.
            raise SecretError(
                "--secret-file (or BLOOMLINK_SECRET_FILE) takes the path of the secret file, "
                "not the secret; what was given is no file and is not shown. If it was the "
                "secret, treat it as exposed (shell history, process list): create a new one "
                "with `bloomlink keygen` and share that"
            ) from None
        if isinstance(error, FileNotFoundError):
            raise SecretError(
                "secret file does not exist (create one with `bloomlink keygen`)",
                path=str(source),
            ) from None
        raise SecretError(f"cannot read secret file: {error.strerror}", path=str(source)) from None
    if not stat.S_ISREG(info.st_mode):
        raise SecretError("secret path is not a regular file", path=str(source))
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            "secret file is readable by group or others; run `chmod 600` on it and rotate the "
            "secret if others may have read it",
            path=str(source),
        )
    try:
        with source.open("rb") as handle:
            data = handle.read(_MAX_FILE_BYTES + 1)
    except OSError as error:
        raise SecretError(f"cannot read secret file: {error.strerror}", path=str(source)) from None
    if len(data) > _MAX_FILE_BYTES:
        raise SecretError(
            "not a bloomlink secret file (far too long; expected two short lines)",
            path=str(source),
        )
    lines = data.decode("ascii", errors="replace").split()
    if len(lines) != 2 or lines[0] != _HEADER:
        raise SecretError(
            "not a bloomlink secret file (expected the header line and one hex line)",
            path=str(source),
        )
    try:
        material = bytes.fromhex(lines[1])
    except ValueError:
        raise SecretError("secret line is not hexadecimal", path=str(source)) from None
    if len(material) < SECRET_BYTES:
        raise SecretError(
            f"secret is {len(material) * 8} bits; at least {SECRET_BYTES * 8} are required",
            path=str(source),
        )
    if len(set(material)) < _MIN_DISTINCT_BYTES:
        raise SecretError(
            "secret is not random (too few distinct bytes, e.g. all zeros or a repeated "
            "pattern); create one with `bloomlink keygen`",
            path=str(source),
        )
    return LinkageSecret(material)
