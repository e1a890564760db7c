"""Unit tests: pure code, no model, server or store; nothing on disk beyond tmp files. Runs in seconds."""
