"""``clinie worker``: run the training jobs of a backend whose store is in PostgreSQL
(``CLINIE_DATABASE_URL``), on any machine that reaches the database and the model directory
(registered with the ``clinie`` command line through the ``clinie.commands`` entry point)."""

from __future__ import annotations

import argparse
from typing import Any

from clinie.settings import Settings


def add_command(commands: Any) -> None:
    """Add ``worker`` to the ``clinie`` command line's sub-commands."""
    worker = commands.add_parser("worker", help="run training jobs from the queue in CLINIE_DATABASE_URL "
                                                "(trainings of a backend on PostgreSQL)")
    worker.add_argument("--concurrency", type=int, default=1,
                        help="trainings run at once (default 1; each takes the cores it can)")
    worker.set_defaults(run=worker_command)


def worker_command(args: argparse.Namespace) -> int:
    import logging.config

    from clinie.logs import dict_config
    from clinie.private import restrict_umask
    from ml_backend.jobs import run_worker

    settings = Settings.load()
    if not settings.database_url:
        raise ValueError("clinie worker runs the jobs of a store in PostgreSQL: set CLINIE_DATABASE_URL "
                         "(with SQLite, clinie serve trains in its own process)")
    logging.config.dictConfig(dict_config(settings.log_level, settings.log_format))
    restrict_umask()
    run_worker(settings, args.concurrency)
    return 0
