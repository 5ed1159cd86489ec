"""Run `floatedge train` under torchrun and keep each rank's final model, so a test can check that the
ranks stayed in step. Usage: torchrun --nproc_per_node 2 tests/_ddp_worker.py SIDE_DIR <train args>."""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist

import floatedge.train.trainer as trainer
from floatedge.cli import main

side, args = sys.argv[1], sys.argv[2:]
built = []
_build = trainer.build_model


def _capture(cfg, meta):
    model = _build(cfg, meta)
    built.append(model)
    return model


trainer.build_model = _capture  # observe the model the trainer trains; nothing else changes
main(["train", *args], standalone_mode=False)
rank = dist.get_rank()
torch.save({k: v.detach().clone().contiguous() for k, v in built[-1].state_dict().items()}, f"{side}/rank{rank}.pt")
dist.barrier()
dist.destroy_process_group()
