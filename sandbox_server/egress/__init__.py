"""Network egress for sandboxes, by policy: the allow-list and address rules (``rules``, pure), name resolution
(``resolver``), where injected header values come from (``credentials``) and the HTTP proxy a sandbox reaches
the outside through (``proxy``, asyncio, in the server's process)."""
