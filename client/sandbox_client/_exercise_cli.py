"""The ``--exercise/--no-exercise`` option of ``sandbox-admin redteam`` and ``sandbox-admin eval``.

An operator's own checks are exercises by default: the server audits them as such, and its incident response
records what they provoke apart from real traffic, with no mitigation and no page (``SandboxClient(exercise=
True)``). Only an admin key, or a server in development mode, may mark them; the commands check that first, so
a tenant key fails at once with what to do rather than with every case refused. sandbox-admin imports this
module on every start: what it needs beyond that is imported when a command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandbox_client.admin_cli import Options

__all__ = ["EXERCISE_HELP", "require_exercise_rights"]

EXERCISE_HELP = (
    "Run as exercises (the default; needs an admin key or a development-mode server): audited as such, watched by "
    "incident response apart from real traffic, never mitigated or paged. --no-exercise: the tenant's ordinary "
    "traffic (any of its keys), e.g. to test incident response itself."
)


def require_exercise_rights(opts: Options) -> None:
    """Exit 1, saying what to do, when the key may not mark runs as exercises. Only an admin key, or a server in
    development mode, may: the role the Admin API needs, so one cheap admin call tells. Any other failure (an
    unreachable server, an unknown key) is left to the command's own first call, which reports it its own way."""
    from sandbox_client._errors import PermissionDeniedError, SandboxError
    from sandbox_client.admin_cli import EXIT_FAILURE, _fail

    try:
        with opts.client() as admin:
            admin.list_tenants()
    except PermissionDeniedError:
        _fail(opts, "this key may not mark runs as exercises: only an admin key (--api-key, SANDBOX_ADMIN_KEY) or a "
                    "server in development mode may. Use an admin key, or pass --no-exercise to run them as the "
                    "key's tenant's ordinary traffic (incident response then counts validator refusals as escape "
                    "attempts, and may quarantine the tenant).", EXIT_FAILURE)
    except SandboxError:
        return
