"""What one party of a run needs in memory: settings, task, model bound to its method.

The server and every client build the same Session from the same RunConfig, which is
what makes the mask, the head init and the layout agree without sending any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from datasets import Dataset

from common.codecs import Codec, run_codec
from common.config import RunConfig
from common.glue import TaskSpec, get_task, load_split
from common.methods import Method, build_method
from common.model import load_backbone, load_tokenizer, pick_device
from common.train import eval_subset


@dataclass
class Session:
    cfg: RunConfig
    task: TaskSpec
    method: Method
    tokenizer: object

    @classmethod
    def build(cls, cfg: RunConfig) -> Session:
        cfg.validate()
        task = get_task(cfg.task)
        backbone = load_backbone(cfg.model, task, cfg.seed, cfg.untrained_pooler)
        backbone.model.to(pick_device(cfg.device))
        return cls(cfg, task, build_method(backbone, cfg), load_tokenizer(cfg.model))

    @property
    def codec(self) -> Codec:
        return run_codec(self.cfg)

    @property
    def fingerprint(self) -> str:
        """The mask fingerprint, or '' for methods that use no mask."""
        return self.method.mask.fingerprint if self.method.mask else ""

    @cached_property
    def dev_set(self) -> Dataset:
        dev = load_split(self.task, "validation", self.cfg.resolved_data_dir)
        return eval_subset(dev, self.cfg.eval_max_examples, self.cfg.seed)
