"""``fusion-mcp eval``'s engine: question sets, running each system through the one request path, grading
and the report.

:mod:`~fusion_mcp.evals.questions` reads question sets, :mod:`~fusion_mcp.evals.runner` runs and resumes an
eval, :mod:`~fusion_mcp.evals.grading` scores answers, :mod:`~fusion_mcp.evals.report` writes the table,
``summary.json`` and the chart. The command itself (arguments, confirmation, live display) is
:mod:`fusion_mcp.cli.evaluate`.

May import: ``engine`` and what it stands on. Imports no MCP module and no web framework.
"""
