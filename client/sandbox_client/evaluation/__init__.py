"""Evaluation suites run through the sandbox (``sandbox-admin eval``).

    models       the suite formats (pydantic, frozen, unknown keys refused): cases, HumanEval problems, completions
    suite        loading suite files, every problem reported with its file:line; the suites shipped in suites/
    runner       running the cases concurrently through an AsyncSandboxClient and judging each run
    report       the statistics, the JSON report (stable keys) and the rich tables
    html_report  the self-contained HTML report with its SVG latency histogram
    cli          the typer command

Nothing is imported here: sandbox-admin imports ``cli`` on every start, and the other modules need pydantic.
"""
