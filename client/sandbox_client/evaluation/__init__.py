"""Evaluation suites run through the sandbox (``sandbox-admin eval``).

    models       the suite formats (pydantic, frozen, unknown keys refused): cases (one program, or steps run in
                 one session), HumanEval problems, completions
    suite        loading suite files, every problem reported with its file:line; the suites shipped in suites/
    runner       running the cases concurrently through an AsyncSandboxClient (a session per run of a
                 multi-step case) and judging each run
    report       the statistics, the JSON report (stable keys) and the rich tables
    html_report  the self-contained HTML report with its SVG latency histogram
    cli          the typer command

Nothing is imported here: sandbox-admin imports ``cli`` on every start, and the other modules need pydantic.
"""
