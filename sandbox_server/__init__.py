"""A code-execution sandbox server for AI agents."""

__version__ = "0.1.0"
