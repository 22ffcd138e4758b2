"""Benchmarks that measure what an enhanced tower buys: MMVP-VLM, MMVP, CV-Bench, general VQA."""
