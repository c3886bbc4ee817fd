"""Execution: the servicer, the frozen ExecutionSpec/ExecutionResult, runtimes and admission control."""
