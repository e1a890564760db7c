import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

# transformers reports every fresh classifier head it initialises: noise in test logs
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
