"""Loading a LLaVA checkpoint and answering prompts about images with batched greedy decoding.

The one place where an evaluation prompt becomes chat text (`format_prompt`: through the chat
template of the checkpoint's own processor, which for checkpoints built here is LLaVA-1.5's
vicuna_v1, system prompt + "USER: <image>\\n{prompt} ASSISTANT:"), and where images are prepared
as LLaVA-1.5 evaluates them: padded to a square with the processor's mean colour
(`image_aspect_ratio=pad`) before the processor resizes them. The lmms-eval plugin reuses both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from tqdm import tqdm

from llava_plugin import images as llava_images
from llava_plugin.chat import chat_template, render_chat
from llava_plugin.llava import IMAGE_TOKEN  # noqa: F401 (the lmms-eval plugin imports it from here)


def format_prompt(prompt: str, with_image: bool = True, processor=None) -> str:
    """One user turn (the image, then `prompt`) as chat text ending where the assistant starts,
    rendered by `processor.apply_chat_template`: the chat template saved with the checkpoint under
    evaluation. Without a processor, by the template every checkpoint built here carries
    (llava_plugin/templates.yaml's vicuna_v1, LLaVA-1.5's conv_vicuna_v1)."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    if processor is not None:
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return render_chat(chat_template(), messages, add_generation_prompt=True)


def load_mllm(
    path: str, device: str = "cpu", dtype: torch.dtype = torch.float32, vision_tower: str | None = None
):
    """(model, processor) from an HF Llava dir or an original LLaVA-1.5 dir, in eval mode.
    `vision_tower` (a tower spec) says where an original checkpoint's `mm_vision_tower` lives."""
    from llava_plugin.convert_llava import load_llava

    model, processor = load_llava(path, device=device, dtype=dtype, vision_tower=vision_tower)
    return model.eval(), processor


def mean_color(processor) -> tuple[int, int, int]:
    """The pad colour of a LlavaProcessor's images, exactly as training pads them."""
    return llava_images.processor_mean_color(processor.image_processor)


@torch.no_grad()
def generate(
    model,
    processor,
    images: Sequence[Image.Image | None],
    prompts: Sequence[str],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    pad_to_square: bool = True,
    desc: str = "generate",
) -> list[str | None]:
    """Greedy answers, one per (image, prompt). Samples whose image is None get None (the caller
    counts them as missing), never a text-only guess."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"  # decoder-only batching: the new tokens must line up on the right
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # LLaVA-1.5 pads with <unk>
    fill = mean_color(processor)
    device = next(model.parameters()).device
    answers: list[str | None] = [None] * len(prompts)
    todo = [i for i, im in enumerate(images) if im is not None]
    for start in tqdm(range(0, len(todo), batch_size), desc=desc, unit="batch"):
        chunk = todo[start : start + batch_size]
        batch_images = [llava_images.pad_to_square(images[i], fill) if pad_to_square else images[i] for i in chunk]
        inputs = processor(
            images=batch_images, text=[prompts[i] for i in chunk], return_tensors="pt", padding=True
        ).to(device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        output = model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        for i, text in zip(chunk, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            answers[i] = text.strip()
    return answers
