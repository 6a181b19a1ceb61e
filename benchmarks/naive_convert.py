#!/usr/bin/env python
"""The naive conversion peers use, for ``bench_convert.py``'s baseline: everything loaded with torch, handed to
MindSpore, saved with ``mindspore.save_checkpoint``; no checks, no manifest, no streaming.

    python benchmarks/naive_convert.py SRC.pth OUT.safetensors
"""
import sys

import mindspore as ms
import torch

src, out = sys.argv[1], sys.argv[2]
state = torch.load(src, map_location="cpu", weights_only=True)
state = state.get("state_dict", state)
params = [{"name": k, "data": ms.Tensor(v.numpy())} for k, v in state.items()]
ms.save_checkpoint(params, out, format="safetensors")
