#!/usr/bin/env bash
# Prepare a host to develop, test and run the sandbox server. Idempotent: safe to run again and again.
#
#   bash scripts/setup.sh          # run as root on a fresh Debian 12 machine, from a clone of the repo
#
# 1. Host packages (apt). Besides the server's own venv, the jails bind the host's /usr read-only, so the
#    runtimes sandboxed code uses are the host's: /usr/bin/python3, /usr/bin/node and bash must exist.
#    apt-get update runs only when something is missing, so repeated runs stay fast and offline.
# 2. The repo's virtualenv (.venv) with the client and the server (editable, with the dev extras).
#    The pip step is skipped when neither pyproject.toml changed since the last successful install
#    (SETUP_FORCE=1 forces it). Its output goes to .venv/setup-pip.log and is shown only on failure.
#
# Environment: PYTHON (interpreter that creates the venv; default python3), SETUP_FORCE=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------- host packages
# docker.io and debootstrap serve the Docker backend and its offline image build; util-linux gives unshare.
# The data stack and the Jupyter kernel are for the sandboxes (they run the host's /usr/bin/python3): numpy,
# pandas and matplotlib import offline in every execution, and sessions run an IPython kernel driven with
# jupyter_client. gcc and libc6-dev build the warm path's native PID 1 (zygote_native.c) when the server starts.
# postgresql and redis-server: the tests start throwaway servers of their own (tests/postgres_server.py,
# tests/redis_server.py) for the stores and the state replicas share; haproxy balances the tests' replicas
# (tests/haproxy_server.py). None of them is started here.
# chromium: the web console's tests (tests/console) drive Debian's browser headless through Playwright, pointed at
# this executable, so Playwright never downloads a browser of its own.
APT_PACKAGES=(python3 python3-venv python3-pip nodejs bash ca-certificates iproute2 procps util-linux perl
    docker.io debootstrap tar openssl prometheus python3-seccomp gcc libc6-dev postgresql redis-server haproxy
    python3-numpy python3-pandas python3-matplotlib python3-ipykernel python3-jupyter-client chromium)
# Paths the jails (and this script) rely on, beyond "the package is installed".
REQUIRED_PATHS=(/usr/bin/python3 /usr/bin/node /bin/bash /usr/lib/python3/dist-packages/ipykernel)

pkg_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == "installed" ]]
}

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${APT_PACKAGES[@]}"; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
fi
missing_paths=()
for path in "${REQUIRED_PATHS[@]}"; do
    [[ -e "$path" ]] || missing_paths+=("$path")
done

if ((${#missing[@]} > 0)) || ((${#missing_paths[@]} > 0)); then
    command -v apt-get >/dev/null 2>&1 \
        || die "missing ${missing[*]:-} ${missing_paths[*]:-} and no apt-get here; install them by hand"
    [[ "$(id -u)" -eq 0 ]] || die "missing ${missing[*]:-} ${missing_paths[*]:-}; run this script as root"
    # A path can be missing while every package is "installed" (a broken install): reinstall all in that case.
    ((${#missing[@]} > 0)) || missing=("${APT_PACKAGES[@]}")
    log "installing host packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    reinstall=()
    ((${#missing_paths[@]} > 0)) && reinstall=(--reinstall)
    # Installing docker.io must not start a system dockerd (with its default bridge network): the tests and
    # operators start dockerd themselves. policy-rc.d is Debian's switch for "do not start services now".
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added_policy=1
    fi
    apt-get install -y -qq --no-install-recommends "${reinstall[@]}" "${missing[@]}" >/dev/null \
        || { ((added_policy)) && rm -f "$policy"; die "apt-get install failed"; }
    ((added_policy)) && rm -f "$policy"
    for path in "${REQUIRED_PATHS[@]}"; do
        [[ -e "$path" ]] || die "$path is still missing after installing packages"
    done
else
    log "host packages present"
fi
# npm, for `npm install` in sandboxes (docs/egress.md): Debian ships it apart from nodejs; NodeSource's nodejs
# carries its own (and conflicts with Debian's npm), so only a host without one gets Debian's.
if ! command -v npm >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" -eq 0 ]]; then
        log "installing npm"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null \
            || die "apt-get install npm failed"
    else
        log "warning: no npm here: \`npm install\` will not work in sandboxes"
    fi
fi

# ---------------------------------------------------------------------------------------------- virtualenv
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"

version_ok() {  # the interpreter runs and is >= 3.11
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

if [[ -e "$VENV" ]] && ! version_ok "$VPY"; then
    # A half-made or stale venv (e.g. the repo moved or its interpreter vanished): rebuild it, never reuse it.
    log "existing .venv is unusable; recreating it"
    rm -rf "$VENV"
fi
if [[ ! -e "$VENV" ]]; then
    version_ok "$PYTHON" || die "$PYTHON must be Python >= 3.11 (found: $("$PYTHON" --version 2>&1 || true))"
    log "creating .venv with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

# Skip pip when the dependency declarations, the interpreter, the location and the package layout are unchanged
# since the last successful install and both distributions are still there. Editable installs pick up edits to
# modules, but setuptools' editable finder records at install time which packages are regular (have an
# __init__.py) and which are namespaces, so a package gaining or losing its __init__.py needs a reinstall.
STAMP="$VENV/.setup-stamp"
stamp="$(
    {
        printf '%s\n' "$ROOT"
        "$VPY" -c 'import sys; print(sys.version)'
        cat pyproject.toml client/pyproject.toml
        { find sandbox_server client/sandbox_client -name __init__.py -not -path "*/__pycache__/*" 2>/dev/null || true; } \
            | LC_ALL=C sort
    } | sha256sum | cut -d' ' -f1
)"
installed() {
    "$VPY" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as md
for dist in ("sandbox-server", "sandbox-client", "pytest", "ruff", "mypy"):
    md.distribution(dist)
EOF
}

if [[ "${SETUP_FORCE:-0}" != "1" && -f "$STAMP" && "$(cat "$STAMP")" == "$stamp" ]] && installed; then
    log ".venv up to date"
else
    log "installing the client and the server into .venv (editable, with dev extras)"
    rm -f "$STAMP"
    PIP_LOG="$VENV/setup-pip.log"
    if ! "$VPY" -m pip install --disable-pip-version-check --config-settings editable_mode=compat -e "./client[cli,langchain,mcp]" -e ".[dev]" >"$PIP_LOG" 2>&1; then
        tail -n 60 "$PIP_LOG" >&2
        die "pip install failed (full log: $PIP_LOG)"
    fi
    installed || die "pip reported success but sandbox-server/sandbox-client are not importable"
    printf '%s\n' "$stamp" >"$STAMP"
fi

log "ok ($("$VPY" --version 2>&1) in .venv; runtimes: $(/usr/bin/python3 --version 2>&1), node $(/usr/bin/node --version 2>&1))"
