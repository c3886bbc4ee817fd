"""What a sandbox with network finds in its environment: where the proxy is (the sandbox has no DNS and no
route out; every client library that honours the usual variables goes through the proxy)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sandbox_server.egress.netns import PROXY_PORT

if TYPE_CHECKING:
    from sandbox_server.settings import Settings

PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
NO_PROXY = "localhost,127.0.0.1,::1"
# The usual variables in both cases (curl reads only the lower-case http_proxy), npm's own names, and Node's
# switch to honour them (Node 22.21+/24.5+).
# Older Nodes get node_proxy.mjs, loaded before the program as a data: URL (nothing of it on a filesystem the
# sandbox would need to see).
_NODE_PRELOAD = "data:text/javascript;base64," + base64.b64encode(
    (Path(__file__).with_name("node_proxy.mjs")).read_bytes()).decode()
PROXY_ENV: tuple[tuple[str, str], ...] = (
    ("HTTP_PROXY", PROXY_URL), ("HTTPS_PROXY", PROXY_URL), ("http_proxy", PROXY_URL), ("https_proxy", PROXY_URL),
    ("NO_PROXY", NO_PROXY), ("no_proxy", NO_PROXY),
    ("npm_config_proxy", PROXY_URL), ("npm_config_https_proxy", PROXY_URL),
    ("NODE_USE_ENV_PROXY", "1"), ("NODE_OPTIONS", f"--import={_NODE_PRELOAD}"),
)
# Where the proxy is: the server's to say (a request may not point its sandbox elsewhere). NODE_OPTIONS is not
# among them: a request's own options are kept, after the preload (with_proxy_env).
PROXY_ENV_NAMES = frozenset(name for name, _ in PROXY_ENV) - {"NODE_OPTIONS"}


def with_proxy_env(env: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """A sandbox's variables with the proxy's first, the request's own NODE_OPTIONS joined after the preload."""
    own = dict(env).get("NODE_OPTIONS")
    proxy = tuple((name, f"{value} {own}" if name == "NODE_OPTIONS" and own else value) for name, value in PROXY_ENV)
    return (*proxy, *((name, value) for name, value in env if name != "NODE_OPTIONS"))

# Packages (docs/egress.md#packages): pip installs with --target into a directory on the interpreter's path, and
# npm into node_modules beside the program. A session's land in its workspace (kept across calls, in snapshots);
# a one-shot execution's in its own /tmp, so that they do not come back as output files.
WHEELHOUSE = "/wheelhouse"
SESSION_PACKAGES = "/work/.packages"
ONE_SHOT_PACKAGES = "/tmp/.packages"  # noqa: S108 - the sandbox's own private tmpfs


def package_env(*, session: bool, network: bool, wheelhouse: bool, index_url: str | None,
                npm_registry: str | None) -> tuple[tuple[str, str], ...]:
    """The variables that make ``pip install`` and ``npm install`` work in a sandbox: from the operator's mirror
    when it has network (and a mirror is set), from the read-only wheelhouse, or both. Empty when neither can
    serve anything."""
    if not (network or wheelhouse):
        return ()
    target = SESSION_PACKAGES if session else ONE_SHOT_PACKAGES
    env: list[tuple[str, str]] = [
        ("PIP_TARGET", target), ("PYTHONPATH", target),
        ("PIP_DISABLE_PIP_VERSION_CHECK", "1"), ("PIP_NO_WARN_SCRIPT_LOCATION", "1"),
        ("npm_config_cache", "/tmp/.npm"), ("npm_config_update_notifier", "false"),  # noqa: S108
        ("npm_config_fund", "false"), ("npm_config_audit", "false"),
    ]
    if wheelhouse:
        env.append(("PIP_FIND_LINKS", WHEELHOUSE))
    if network and index_url:
        env.append(("PIP_INDEX_URL", index_url))
        parts = urlsplit(index_url)
        if parts.scheme == "http" and parts.hostname:
            # The operator chose a plain-HTTP mirror (on its own network, say): pip refuses one unless told.
            env.append(("PIP_TRUSTED_HOST", parts.hostname))
    elif not network or wheelhouse:
        # Offline (or the wheelhouse is the operator's only source): never reach for PyPI.
        env.append(("PIP_NO_INDEX", "1"))
    if network and npm_registry:
        env.append(("npm_config_registry", npm_registry))
    elif not network:
        env.append(("npm_config_offline", "true"))
    return tuple(env)


def sandbox_env(env: tuple[tuple[str, str], ...], settings: Settings, *, session: bool,
                network: bool) -> tuple[tuple[str, str], ...]:
    """A one-shot execution's or a session's own variables (``env``, the request's), with what egress adds:
    where packages go and come from, and, with network, where the proxy is. One place for both kinds."""
    own = (*package_env(session=session, network=network, wheelhouse=settings.wheelhouse is not None,
                        index_url=settings.package_index_url, npm_registry=settings.npm_registry_url), *env)
    return with_proxy_env(own) if network else own
