"""Parity helpers between the PyTorch reference and the MindSpore port (kept torch-free at import time)."""
