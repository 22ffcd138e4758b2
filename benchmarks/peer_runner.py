"""Run the original LLaVA's training entry point with a step clock, in the peer's own venv.

    PEER_TIMES=OUT.json python peer_runner.py <llava/train/train.py arguments>

This file is ours; the LLaVA code it runs is the user's checkout (on PYTHONPATH), unmodified.
It adds one `transformers.TrainerCallback` to the callbacks every HF Trainer starts with
(`transformers.trainer.DEFAULT_CALLBACKS`), which prints a "ready to train" line when training
begins and notes `time.perf_counter()` then and at the end of every optimizer step, then calls
`llava.train.train.train()`. When training ends, rank 0 writes the step-end times and the
process's peak RSS, and every rank exits at once: the benchmark needs no
weights, and LLaVA's save under DeepSpeed calls `torch.cuda.synchronize()`, which fails on CPU.
"""
import json
import os
import resource
import sys
import time

import transformers.trainer as hf_trainer
from transformers import TrainerCallback

# printed when the Trainer has its model, data and optimizer and is about to take the first step:
# the point benchmarks/startup.py times, as genfeedback's trainers log "ready to train" there
READY = "peer_runner: ready to train"


class StepClock(TrainerCallback):
    def __init__(self):
        self.train_begin = None
        self.step_ends = []
        self.losses = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()
        print(READY, flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            tower = model.get_model().get_vision_tower() if hasattr(model, "get_model") else None
            with open(os.environ["PEER_TIMES"], "w") as f:
                json.dump({"train_begin": self.train_begin, "step_ends": self.step_ends, "losses": self.losses,
                           "world_size": args.world_size, "deepspeed": bool(args.deepspeed),
                           "llm_dtype": str(next(model.parameters()).dtype),
                           "tower_dtype": str(tower.dtype) if tower is not None else None,
                           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, f)
        sys.stdout.flush()
        os._exit(0)


hf_trainer.DEFAULT_CALLBACKS.append(StepClock)

if __name__ == "__main__":
    from llava.train.train import train

    train()
