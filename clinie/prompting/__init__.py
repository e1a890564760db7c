"""Prompt building and response parsing; templates are versioned files in ``templates/``."""
