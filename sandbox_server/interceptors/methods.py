"""The Sandbox service's methods, grouped as the links of the chain treat them (one list, so a new method
cannot be forgotten by one link and seen by another)."""

from __future__ import annotations

PREFIX = "/sandbox.v1.Sandbox/"
EXECUTE = frozenset({PREFIX + "Execute", PREFIX + "ExecuteStream"})
SESSION = frozenset(PREFIX + name for name in (
    "CreateSession", "GetSession", "ListSessions", "CloseSession", "UploadFile", "DownloadFile", "ListFiles",
    "DeleteFile", "SnapshotSession", "ListSnapshots", "DeleteSnapshot"))
CREATE_SESSION = PREFIX + "CreateSession"
CLOSE_SESSION = PREFIX + "CloseSession"
UPLOAD_FILE = PREFIX + "UploadFile"
DOWNLOAD_FILE = PREFIX + "DownloadFile"
# The methods that name one session, forwarded to the replica holding it (Execute and ExecuteStream only when
# their session_id is set; RecordUsage's session_id is an agent's, not a sandbox session).
SESSION_ADDRESSED = frozenset(PREFIX + name for name in (
    "Execute", "ExecuteStream", "GetSession", "CloseSession", "UploadFile", "DownloadFile", "ListFiles",
    "DeleteFile", "SnapshotSession"))
# The Admin service's calls on one session, forwarded the same way (a held session's live state is its holder's).
ADMIN_PREFIX = "/sandbox.v1.Admin/"
ADMIN_SESSION_ADDRESSED = frozenset({ADMIN_PREFIX + "GetSession", ADMIN_PREFIX + "CloseSession"})
# Calls every replica answers for its own part (interceptors/forward.py). Listings of what lives in one server
# (sessions, running executions): the server asked merges every server's answer. Lookups of a running
# execution: the server that runs it answers.
FLEET_LISTINGS = frozenset({PREFIX + "ListSessions", ADMIN_PREFIX + "ListSessions", ADMIN_PREFIX + "ListExecutions"})
FLEET_LOOKUPS = frozenset({ADMIN_PREFIX + "GetExecution", ADMIN_PREFIX + "KillExecution"})
