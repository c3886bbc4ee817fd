"""Sessions: a sandbox kept across an agent's calls, with a stateful Python kernel and a workspace
(docs/sessions.md)."""
