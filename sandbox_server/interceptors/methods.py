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
