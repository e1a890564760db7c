"""WSGI entry for gunicorn: ``gunicorn 'ml_backend.wsgi:app'`` (settings from CLINIE_* variables)."""

from clinie.logs import configure
from clinie.settings import Settings
from ml_backend.app import create_app

settings = Settings.load()
configure(settings.log_level, settings.log_format)
app = create_app(settings)
