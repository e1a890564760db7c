"""clinie: pre-annotation of clinical and biomedical text for Label Studio."""

__version__ = "0.1.0"
