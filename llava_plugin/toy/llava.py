"""The zoo's LLaVA checkpoints: the tiny CLIP + tiny vicuna joined by a random projector, written
both as an HF Llava directory and in the original LLaVA-1.5 layout (same weights), so the
loaders and the converters run on the real formats."""
from __future__ import annotations

from llava_plugin.convert_llava import save_llava_original
from llava_plugin.llava import build_llava, save_llava
from llava_plugin.registry import load_tower


def write_llava_checkpoints(zoo, seed: int) -> None:
    """Write models/llava-tiny-hf (`zoo.llava`) and models/llava-v1.5-tiny (`zoo.llava_original`,
    its `mm_vision_tower` the absolute path of `zoo.clip`)."""
    if zoo.clip is None or zoo.llm is None:
        raise ValueError("the llava part needs the vision and llm parts (zoo.clip, zoo.llm) built first")
    models = zoo.root / "models"
    tower = load_tower(str(zoo.clip))
    model, processor = build_llava(tower, zoo.llm, seed=seed)
    zoo.llava = save_llava(model, processor, models / "llava-tiny-hf",
                           metadata={"vision_tower": str(zoo.clip), "llm": str(zoo.llm), "stage": "random projector"})
    # Small shards so the sharded-index reading path runs, as for the real 2-shard checkpoint.
    zoo.llava_original = save_llava_original(model, processor, models / "llava-v1.5-tiny",
                                             vision_tower=str(zoo.clip), tokenizer_dir=zoo.llm,
                                             max_shard_size=400_000)
