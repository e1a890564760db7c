"""Integration tests: real components (store, embedded models, backend app, gunicorn, S3, faults), no Label Studio."""
