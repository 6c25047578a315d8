"""The command line: ``fusion-mcp`` and its commands.

:mod:`~fusion_mcp.cli.main` parses arguments and runs a command (``serve``, ``ask``, ``runs``, ``usage``,
``doctor``, ``host-config``, ...), :mod:`~fusion_mcp.cli.terminal` draws ``ask``'s live progress,
:mod:`~fusion_mcp.cli.doctor` checks a set-up, :mod:`~fusion_mcp.cli.host_config` writes a host's config
entry. A new command goes in ``main`` (its parser and handler) with a module of its own here when it is
more than a few lines.

May import: anything in the package. Nothing imports it but ``fusion_mcp.__main__`` and the console script.
Importing it sets the process's garbage collector (:data:`YOUNG_COLLECTION_AFTER`): it is the entry of a
process (the console script, ``python -m fusion_mcp``, a worker), never a library's import.
"""

import gc

YOUNG_COLLECTION_AFTER = 20_000
"""Allocations (net of frees) between two collections of the youngest generation; CPython's default is 700.

A server allocates thousands of short-lived objects per call (requests, chunks, models, records), nearly
all freed by reference counting; at 700 the collector still walked the young generation about once a call
(collections took ~0.4 ms of a call's ~13 ms of CPU), and starting the server collected ~200 times while
importing the SDK and pydantic. At 20,000 a start is ~30 ms shorter and a call's collections take ~0.1-0.2
ms (``docs/benchmarks.md`` §8); garbage in reference cycles still goes within 20,000 allocations."""

gc.set_threshold(YOUNG_COLLECTION_AFTER, 20, 10)
