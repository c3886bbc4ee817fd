"""Configuration shared by the sync and asyncio clients: defaults, TLS, the channel, deadlines, call metadata."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio

_Policy = TypeVar("_Policy")

DEFAULT_TIMEOUT = 60.0
"""Seconds: the deadline of every call that passes no ``timeout`` of its own."""


# A result carries up to the server's output ceiling plus its output files (64 MiB + 8 MiB by default), well
# past gRPC's 4 MiB default; the server caps what it sends, so the client need not cap it lower.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

# After a failed connection gRPC waits before it tries the address again, and calls made meanwhile fail at once
# with UNAVAILABLE; by default those waits grow to 120 s, so a server back after a long outage could stay
# unreached for two minutes, whatever the retry policy and the circuit breaker's probes say. Capped like the
# retry policy's backoff (0.25 s growing to 5 s by default), a server that is back is reached within seconds.
INITIAL_RECONNECT_BACKOFF_MS = 250
MAX_RECONNECT_BACKOFF_MS = 5_000


@dataclass(frozen=True)
class TLSConfig:
    """TLS for the channel, and mutual TLS when a client certificate is given. Certificates and key are PEM
    bytes (``TLSConfig.from_files`` reads them from files).

    Raises:
        TypeError: a certificate or the key is not bytes.
        ValueError: a client certificate without its key, or the reverse; an empty ``server_name``.
    """

    root_certificates: bytes | None = None
    """The CA certificates that sign the server's certificate; None trusts gRPC's bundled public roots."""
    client_certificate: bytes | None = None
    """mTLS: the client's certificate chain, presented to a server that asks for one."""
    client_private_key: bytes | None = field(default=None, repr=False)
    """mTLS: the private key of ``client_certificate`` (kept out of ``repr``)."""
    server_name: str | None = None
    """Check the server's certificate against this name instead of the target's host (e.g. when connecting
    by IP address to a server whose certificate names its DNS name)."""

    def __post_init__(self) -> None:
        for name in ("root_certificates", "client_certificate", "client_private_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bytes):
                raise TypeError(f"TLSConfig.{name} must be PEM bytes, not {type(value).__name__}")
        if (self.client_certificate is None) != (self.client_private_key is None):
            raise ValueError("TLSConfig.client_certificate and client_private_key go together (mTLS)")
        if self.server_name is not None and not self.server_name:
            raise ValueError("TLSConfig.server_name is empty; pass None to check the target's host")

    @classmethod
    def from_files(
        cls,
        *,
        root_certificates: str | os.PathLike[str] | None = None,
        client_certificate: str | os.PathLike[str] | None = None,
        client_private_key: str | os.PathLike[str] | None = None,
        server_name: str | None = None,
    ) -> TLSConfig:
        """A TLSConfig from PEM files (each argument a path, or None). Raises OSError when a file cannot be read."""

        def read(path: str | os.PathLike[str] | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(
            root_certificates=read(root_certificates),
            client_certificate=read(client_certificate),
            client_private_key=read(client_private_key),
            server_name=server_name,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.client_private_key,
            certificate_chain=self.client_certificate,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        return [] if self.server_name is None else [("grpc.ssl_target_name_override", self.server_name)]


@dataclass(frozen=True)
class ChannelConfig:
    """Everything needed to open a client's one channel (sync or asyncio)."""

    target: str
    credentials: grpc.ChannelCredentials | None
    """None: a plaintext channel."""
    options: tuple[tuple[str, Any], ...]

    @classmethod
    def build(
        cls,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        tls: TLSConfig | None,
        options: Sequence[tuple[str, Any]],
    ) -> ChannelConfig:
        """Raises ValueError when both ``credentials`` and ``tls`` are given (they are two ways to say one
        thing), TypeError when ``tls`` is not a TLSConfig."""
        if tls is not None and credentials is not None:
            raise ValueError("pass either credentials or tls, not both")
        if tls is not None and not isinstance(tls, TLSConfig):
            raise TypeError(f"tls must be a TLSConfig, not {type(tls).__name__}")
        if tls is not None:
            credentials = tls.channel_credentials()
            options = [*tls.channel_options(), *options]
        return cls(target, credentials, tuple(options))

    def open(self) -> grpc.Channel:
        """A sync channel with our default options: TLS when there are credentials, plaintext otherwise."""
        return open_channel(self.target, self.credentials, self.options)

    def open_aio(self) -> grpc.aio.Channel:
        """An asyncio channel (bound to the running event loop) with our default options."""
        options = channel_options(self.options)
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=options)
        return grpc.aio.secure_channel(self.target, self.credentials, options=options)


def channel_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The caller's channel options, after our defaults (so a caller's own setting wins)."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        *options,
    ]


def open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, Any]]
) -> grpc.Channel:
    """A sync channel with our default options: TLS when ``credentials`` are given, plaintext otherwise."""
    if credentials is None:
        return grpc.insecure_channel(target, options=channel_options(options))
    return grpc.secure_channel(target, credentials, options=channel_options(options))


def check_timeout(timeout: float) -> float:
    """``timeout`` as a float of seconds. Raises ValueError unless it is positive and finite."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be positive and finite, got {timeout!r}")
    return float(timeout)


def call_timeout(timeout: float | None, default: float) -> float:
    """The deadline of one call: its own ``timeout`` or the client's. A deadline is always sent."""
    return default if timeout is None else check_timeout(timeout)


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata every call carries: ``authorization: Bearer <key>`` when there is a key."""
    if api_key is None:
        return ()
    if not api_key:
        # Most often an unset environment variable: say so rather than send an empty credential.
        raise ValueError("api_key is empty; pass None to send no key")
    return (("authorization", f"Bearer {api_key}"),)


def check_exercise(exercise: bool) -> bool:
    """``exercise`` itself. Raises TypeError unless it is a bool (a stray string must not mark real traffic)."""
    if not isinstance(exercise, bool):
        raise TypeError(f"exercise must be a bool, not {type(exercise).__name__}")
    return exercise


def new_idempotency_key() -> str:
    """A fresh key for one logical call: 32 random hex digits (uuid4), the same on each of its attempts."""
    return uuid.uuid4().hex


def check_policy(policy: _Policy | None, cls: type[_Policy], name: str) -> _Policy | None:
    """``policy`` itself. Raises TypeError unless it is a ``cls`` or None (None turns the feature off)."""
    if policy is not None and not isinstance(policy, cls):
        raise TypeError(f"{name} must be a {cls.__name__} or None, not {type(policy).__name__}")
    return policy
