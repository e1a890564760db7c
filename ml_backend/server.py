"""``clinie serve``: the backend under gunicorn, as deployed (the command is registered with the
``clinie`` command line through the ``clinie.commands`` entry point in pyproject.toml)."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from typing import Any

from clinie.settings import WORKER_TIMEOUT_SECONDS, Settings

#: gunicorn's default (the combined log format) with ``-`` for the user: ``%(u)s`` would write the
#: basic-auth user name of every request to the log.
ACCESS_LOG_FORMAT = '%(h)s %(l)s - %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


def add_command(commands: Any) -> None:
    """Add ``serve`` to the ``clinie`` command line's sub-commands."""
    serve = commands.add_parser("serve", help="run the Label Studio ML backend (gunicorn)")
    serve.add_argument("--host", help="default: CLINIE_HOST or 127.0.0.1 (any other address requires basic auth)")
    serve.add_argument("--port", type=int, help="default: CLINIE_PORT or 9090")
    serve.add_argument("--threads", type=int, default=8, help="concurrent requests (default 8)")
    serve.set_defaults(run=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    from clinie.logs import dict_config
    from ml_backend.app import create_app

    settings = Settings.load()
    settings = replace(settings, host=args.host or settings.host, port=args.port or settings.port)
    settings.validate_serving()  # refused here, in one line, before gunicorn binds anything
    host, port = settings.host, settings.port

    class Server(BaseApplication):
        # One worker process: it owns the training thread and the loaded models; threads serve
        # concurrent requests. Models are loaded in the worker, never before the fork.
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", 1)
            self.cfg.set("threads", args.threads)
            self.cfg.set("timeout", WORKER_TIMEOUT_SECONDS)
            self.cfg.set("graceful_timeout", math.ceil(settings.shutdown_grace_seconds))  # whole seconds
            self.cfg.set("loglevel", settings.log_level.lower())
            self.cfg.set("access_log_format", ACCESS_LOG_FORMAT)
            self.cfg.set("logconfig_dict", dict_config(settings.log_level, settings.log_format))
            # gunicorn's control socket (~/.gunicorn/gunicorn.ctl) is unused, and shared by every
            # instance of the same user.
            self.cfg.set("control_socket_disable", True)
            # SIGTERM: requests in flight get the grace to finish; the re-sync schedule
            # stops. A training still running dies with the process and is marked failed at
            # the next start; the serving model is untouched (see ml_backend.training).
            self.cfg.set("worker_exit", lambda server, worker: worker.wsgi.extensions["clinie"].close())

        def load(self):  # noqa: ANN201 - gunicorn's hook
            return create_app(settings)

    Server().run()
    return 0
