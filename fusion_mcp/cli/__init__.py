"""The command line: ``fusion-mcp`` and its commands.

:mod:`~fusion_mcp.cli.main` parses arguments and runs a command (``serve``, ``ask``, ``runs``, ``usage``,
``doctor``, ``host-config``, ...), :mod:`~fusion_mcp.cli.terminal` draws ``ask``'s live progress,
:mod:`~fusion_mcp.cli.doctor` checks a set-up, :mod:`~fusion_mcp.cli.host_config` writes a host's config
entry. A new command goes in ``main`` (its parser and handler) with a module of its own here when it is
more than a few lines.

May import: anything in the package. Nothing imports it but ``fusion_mcp.__main__`` and the console script.
"""
