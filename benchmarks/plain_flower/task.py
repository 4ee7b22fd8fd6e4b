"""The model, the data and the train/test loops, shared by the plain app and the floor.

As in quickstart-huggingface, with two changes for this machine: SST-2 comes from the
offline GLUE folder instead of the hub, and each round trains a fixed number of steps (the
work fedpafi's `--local-steps` does) instead of whole epochs.
"""

from __future__ import annotations

import os
from itertools import cycle, islice

import datasets
import torch
from datasets import Dataset
from flwr_datasets.partitioner import IidPartitioner
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from common.glue import load_split
from common.model import default_model_path
from common.train import eval_subset

SETTINGS = {"num-clients": 4, "rounds": 3, "local-steps": 20, "batch-size": 16,
            "max-length": 64, "eval-examples": 256, "lr": 1e-4, "seed": 42, "client-cpus": 2}
datasets.disable_progress_bars()


def get_model() -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=2)


def _tokenized(rows: Dataset) -> Dataset:
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    rows = rows.map(lambda batch: tokenizer(batch["text_a"], truncation=True,
                                            max_length=SETTINGS["max-length"]), batched=True)
    return rows.remove_columns(["text_a", "text_b"]).rename_column("label", "labels")


def _loader(rows: Dataset, shuffle: bool) -> DataLoader:
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    return DataLoader(_tokenized(rows), batch_size=SETTINGS["batch-size"], shuffle=shuffle,
                      collate_fn=DataCollatorWithPadding(tokenizer))


def load_data(partition_id: int, num_partitions: int) -> DataLoader:
    """This client's IID shard of the SST-2 train set."""
    partitioner = IidPartitioner(num_partitions=num_partitions)
    partitioner.dataset = load_split("sst2", "train", os.environ["GLUE_DIR"])
    return _loader(partitioner.load_partition(partition_id), shuffle=True)


def load_test_data() -> DataLoader:
    dev = load_split("sst2", "validation", os.environ["GLUE_DIR"])
    return _loader(eval_subset(dev, SETTINGS["eval-examples"], SETTINGS["seed"]), shuffle=False)


def train(net: torch.nn.Module, trainloader: DataLoader, steps: int) -> float:
    optimizer = torch.optim.AdamW(net.parameters(), lr=SETTINGS["lr"])
    net.train()
    total = 0.0
    for batch in islice(cycle(trainloader), steps):
        loss = net(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        total += loss.item()
    return total / steps


@torch.no_grad()
def test(net: torch.nn.Module, testloader: DataLoader) -> tuple[float, float]:
    net.eval()
    loss, correct, seen = 0.0, 0, 0
    for batch in testloader:
        outputs = net(**batch)
        loss += outputs.loss.item() * len(batch["labels"])
        correct += (outputs.logits.argmax(-1) == batch["labels"]).sum().item()
        seen += len(batch["labels"])
    return loss / seen, correct / seen
