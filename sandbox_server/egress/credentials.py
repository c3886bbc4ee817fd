"""Where the values of injected credentials come from: the server's environment (``Credential.env``, read at
lookup time, so a restart-free rotation works) and the operator's secrets file (``Credential.secret``, YAML or
JSON mapping names to strings, re-read when it changes).

A value never appears in an exception, a log line or a refusal: errors name the variable or key only, and a
parse error of the secrets file is reported without the parser's message (which quotes the offending line).
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Mapping
from pathlib import Path

import yaml

from sandbox_server.egress.rules import Credential

__all__ = ["MAX_SECRETS_FILE_BYTES", "CredentialError", "CredentialMissing", "SecretSource", "SecretsFileError"]

MAX_SECRETS_FILE_BYTES = 1024 * 1024


class CredentialError(Exception):
    """A credential's value cannot be had. The message never contains a value."""


class CredentialMissing(CredentialError):
    """The environment variable is unset or empty, or the secrets file has no such key."""


class SecretsFileError(CredentialError):
    """The secrets file is missing, unreadable, accessible to group or others, or not a mapping of strings."""


_Stamp = tuple[int, int, int, int]


class SecretSource:
    """Values for :class:`Credential` s. Safe to share between proxies and threads."""

    def __init__(self, secrets_file: Path | None = None, environ: Mapping[str, str] | None = None) -> None:
        self._file = secrets_file
        self._environ = environ
        self._lock = threading.Lock()
        self._cache: tuple[_Stamp, dict[str, str]] | None = None
        self._served: set[tuple[str | None, str | None]] = set()

    def value(self, credential: Credential) -> str:
        """The current value for ``credential``; raises CredentialMissing or SecretsFileError."""
        value = self._lookup(credential.env, credential.secret)
        with self._lock:
            self._served.add((credential.env, credential.secret))
        return value

    def known_values(self) -> list[str]:
        """Every value currently resolvable for the credentials served so far (for output redaction)."""
        with self._lock:
            served = sorted(self._served, key=repr)
        found: list[str] = []
        for env, secret in served:
            try:
                found.append(self._lookup(env, secret))
            except CredentialError:
                continue
        return list(dict.fromkeys(found))

    def _lookup(self, env: str | None, secret: str | None) -> str:
        if env is not None:
            environ = os.environ if self._environ is None else self._environ
            value = environ.get(env)
            if not value:
                raise CredentialMissing(f"environment variable {env} is not set")
            return value
        if secret is None:  # a Credential has exactly one of env and secret; a forged one gets nothing
            raise CredentialMissing("credential names neither an environment variable nor a secret")
        value = self._secrets().get(secret)
        if not value:
            raise CredentialMissing(f"secret {secret!r} is not in the secrets file")
        return value

    def _secrets(self) -> dict[str, str]:
        path = self._file
        if path is None:
            raise SecretsFileError("a credential names a secret but no secrets file is configured")
        try:
            st = os.stat(path)
        except OSError as exc:
            raise SecretsFileError(f"secrets file {path}: {exc.strerror}") from None
        _check_mode(path, st)
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
        secrets = _read(path)
        with self._lock:
            self._cache = (stamp, secrets)
        return secrets


def _check_mode(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SecretsFileError(f"secrets file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise SecretsFileError(f"secrets file {path} is accessible to group or others (mode "
                               f"{stat.S_IMODE(st.st_mode):04o}); make it 0600 or stricter")


def _read(path: Path) -> dict[str, str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretsFileError(f"secrets file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        # The mode is checked again on what was opened: the path may have been replaced since the stat.
        _check_mode(path, os.fstat(f.fileno()))
        raw = f.read(MAX_SECRETS_FILE_BYTES + 1)
    if len(raw) > MAX_SECRETS_FILE_BYTES:
        raise SecretsFileError(f"secrets file {path} is larger than {MAX_SECRETS_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError):
        # The parser's message quotes the offending line, which may hold a secret: never chained, never shown.
        raise SecretsFileError(f"secrets file {path} is not valid {_kind(path)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SecretsFileError(f"secrets file {path} must map names to strings")
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, str):
            name = key if isinstance(key, str) else "(a non-string key)"
            raise SecretsFileError(f"secrets file {path}: the value of {name!r} is not a string")
    return data


def _kind(path: Path) -> str:
    return "JSON" if path.suffix.lower() == ".json" else "YAML"
