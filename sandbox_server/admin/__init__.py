"""The Admin service: tenant policies and API keys (``admin_handler`` registers it on a server)."""

from __future__ import annotations

from sandbox_server.admin.servicer import ADMIN_SERVICE_NAME, AdminServicer, admin_handler

__all__ = ["ADMIN_SERVICE_NAME", "AdminServicer", "admin_handler"]
