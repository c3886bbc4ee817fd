"""The Admin service: tenant policies, API keys, and operations (incidents, costs, executions, quarantines);
``admin_handler`` registers it on a server."""

from __future__ import annotations

from sandbox_server.admin.servicer import ADMIN_SERVICE_NAME, AdminServicer, admin_handler

__all__ = ["ADMIN_SERVICE_NAME", "AdminServicer", "admin_handler"]
