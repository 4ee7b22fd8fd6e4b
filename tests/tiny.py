"""A tiny random-initialised BERT, saved like a pre-trained backbone (no task head).

Every bias is random and non-zero, as in a pre-trained model: with BERT's all-zero bias
init, a method that reads or changes biases (HiWi, BitFit) would be tested on zeros.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from common.model import default_model_path


def save_tiny_backbone(folder: Path, seed: int = 0, untrained_pooler: bool = False) -> Path:
    """`untrained_pooler` leaves the pooler at its init (zero bias), as all-MiniLM-L6-v2's."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    model = BertModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") and not (untrained_pooler and name.startswith("pooler.")):
                param.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
