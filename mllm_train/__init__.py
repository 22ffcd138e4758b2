"""LLaVA-1.5 pretraining and instruction tuning with any vision tower."""
