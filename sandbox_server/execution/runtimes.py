"""The one table of runtimes (interpreter path, file name and arguments for each language), and what every
program starts in: working directory, host name, fixed environment."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# What every program starts in, whichever backend runs it: its working directory (the scratch), the sandbox's
# host name, and the fixed environment that the request's own variables are added to (validation keeps these
# names for it).
WORKDIR = "/work"
HOSTNAME = "sandbox"
BASE_ENV = (
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", WORKDIR),
    ("TMPDIR", "/tmp"),  # noqa: S108 - the sandbox's own private tmpfs
    ("LANG", "C.UTF-8"),
    # Caches (fontconfig's, pip's, ...) and matplotlib's config and font cache: in the sandbox's own /tmp, not in
    # HOME (the workspace), where they would come back as output files.
    ("XDG_CACHE_HOME", "/tmp/.cache"),  # noqa: S108
    ("MPLCONFIGDIR", "/tmp/matplotlib"),  # noqa: S108
)


@dataclass(frozen=True)
class Runtime:
    language: str                # canonical name
    aliases: tuple[str, ...]
    interpreter: str             # absolute path inside the sandbox (the host's, bound read-only)
    args: tuple[str, ...]        # before the file name
    file_name: str               # the code's name in the working directory
    version_args: tuple[str, ...]
    image: str                   # runtime image name (Docker backend): <prefix><image>:<tag>

    def argv(self) -> tuple[str, ...]:
        return (self.interpreter, *self.args, self.file_name)


RUNTIMES: tuple[Runtime, ...] = (
    # -B: no .pyc files in the scratch dir; -s: no user site; the env has no PYTHON* vars to ignore.
    Runtime("python", ("python3", "py"), "/usr/bin/python3", ("-B", "-s"), "main.py", ("--version",), "python"),
    Runtime("javascript", ("js", "node", "nodejs"), "/usr/bin/node", (), "main.js", ("--version",), "node"),
    Runtime("bash", ("sh", "shell"), "/bin/bash", ("--noprofile", "--norc"), "main.sh", ("--version",), "bash"),
)

_BY_NAME = {name: rt for rt in RUNTIMES for name in (rt.language, *rt.aliases)}


def find_runtime(language: str) -> Runtime | None:
    """The runtime for a language name or alias (case-insensitive), or None."""
    return _BY_NAME.get(language.strip().lower())


@cache
def host_version(runtime: Runtime) -> str:
    """The interpreter's own version string on this host, or "" when it is missing (asked once)."""
    if not Path(runtime.interpreter).exists():
        return ""
    try:
        out = subprocess.run(
            [runtime.interpreter, *runtime.version_args],
            capture_output=True,
            timeout=10,
            check=False,
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else ""
