"""End-to-end tests: a real Label Studio, the container image, Chromium."""
