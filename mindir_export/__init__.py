"""MindIR export and offline (MindSpore Lite) inference helpers (kept torch-free at import time)."""
