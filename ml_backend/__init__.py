"""The Flask service Label Studio talks to; all the work is done by ``clinie``."""
