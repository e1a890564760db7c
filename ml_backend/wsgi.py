"""WSGI entry for gunicorn: ``gunicorn 'ml_backend.wsgi:app'`` (settings from CLINIE_* variables)."""

import logging

from clinie.settings import Settings
from ml_backend.app import create_app

settings = Settings.load()
logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = create_app(settings)
