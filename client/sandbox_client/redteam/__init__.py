"""The red-team corpus and its runner (``sandbox-admin redteam``).

- ``schema``: the corpus format (pydantic models) and what "contained" means for a case;
- ``corpus``: loading the shipped corpus (``corpus/*.yaml``, one file per category) or a directory of one's own;
- ``runner``: ``run_cases`` runs cases through an ``AsyncSandboxClient`` (one-shot executions, and calls in the
  sessions it creates and always closes) and judges each one;
- ``host``: the checks made on the server's host (canaries, loopback listeners, leftover files and processes);
- ``cli``: the command.

This package imports nothing heavy itself: ``sandbox-admin`` registers the command without needing the corpus's
dependencies (pydantic, pyyaml), which are imported when the command runs.
"""
