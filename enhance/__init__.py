"""Generative-feedback post-training of vision towers (DIVA, un2CLIP, GenHancer)."""
