"""The training core both training stages stand on (enhance and mllm_train): the run config,
the batch plan, checkpoints, DeepSpeed, the LR schedule, LoRA merging and the Trainer loop."""
