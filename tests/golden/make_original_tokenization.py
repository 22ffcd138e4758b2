"""Write original_tokenization.json: original LLaVA's input_ids and labels for hand-written
conversations, on the tiny zoo's vicuna-layout tokenizer, as golden data for
`tokenization: original` (tests/test_mllm_conversation.py).

The original's preprocessing runs unmodified from the user's LLaVA checkout (never copied), in a
side venv with its pinned stack (benchmarks/llava_peer.py builds it), and the same tokenizer files:

    python tests/golden/make_original_tokenization.py --llava /path/to/LLaVA [--work /tmp/peer]

The tokenizer is the zoo's (seed 0), rebuilt here; the file records its vocabulary's fingerprint
(`vocab_fingerprint`), and the test refuses to compare against a zoo whose vocabulary differs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "original_tokenization.json"


def vocab_fingerprint(tokenizer_model: Path) -> str:
    """sha256 of a sentencepiece model's pieces, scores and types: what decides the ids. (The file's own
    hash will not do: its trainer spec records the path it was trained at.)"""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    pieces = [(sp.id_to_piece(i), sp.get_score(i), sp.is_control(i), sp.is_byte(i), sp.is_unknown(i))
              for i in range(sp.get_piece_size())]
    return hashlib.sha256(json.dumps(pieces).encode()).hexdigest()


def human(text: str) -> dict:
    return {"from": "human", "value": text}


def gpt(text: str) -> dict:
    return {"from": "gpt", "value": text}


# (template, record): written by hand to cover the places where tokenizations can differ: the text
# right after the image, the image at the end of a question, several rounds, text-only samples,
# a leading gpt turn, digits, punctuation and newlines in answers.
CASES = [
    ("plain", {"id": "plain-instruction", "image": "a.png",
               "conversations": [human("Describe the image.\n<image>"), gpt("a red star")]}),
    ("plain", {"id": "plain-bare", "image": "a.png",
               "conversations": [human("<image>"), gpt("two blue squares on the left")]}),
    ("vicuna_v1", {"id": "v1-image-first", "image": "a.png",
                   "conversations": [human("<image>\nWhat color is the star?"), gpt("Red.")]}),
    ("vicuna_v1", {"id": "v1-image-last", "image": "a.png",
                   "conversations": [human("What is in the picture?\n<image>"),
                                     gpt("A green triangle pointing up.")]}),
    ("vicuna_v1", {"id": "v1-three-rounds", "image": "a.png",
                   "conversations": [human("<image>\nHow many circles are there?"), gpt("There are 3 circles."),
                                     human("What color are they?"), gpt("They are yellow."),
                                     human("Where are they?"), gpt("On the right half.")]}),
    ("vicuna_v1", {"id": "v1-text-only", "conversations": [human("Name a shape with three sides."),
                                                           gpt("A triangle.")]}),
    ("vicuna_v1", {"id": "v1-text-two-rounds",
                   "conversations": [human("Is a square round?"), gpt("No."),
                                     human("Is a circle round?"), gpt("Yes, it is.")]}),
    ("vicuna_v1", {"id": "v1-leading-gpt", "image": "a.png",
                   "conversations": [gpt("Hello! Ask me about the picture."), human("<image>\nHow many stars?"),
                                     gpt("Two.")]}),
    ("vicuna_v1", {"id": "v1-options", "image": "a.png",
                   "conversations": [human("<image>\nHow many shapes are there?\nA. 1\nB. 2\nAnswer with the "
                                           "option's letter from the given choices directly."), gpt("B")]}),
    ("vicuna_v1", {"id": "v1-multiline-answer", "image": "a.png",
                   "conversations": [human("<image>\nList the shapes."), gpt("1. a circle\n2. a square")]}),
]

# Runs in the side venv, with the checkout on sys.path: original LLaVA's own preprocessing, called as
# its train.py calls it (LazySupervisedDataset.__getitem__ and make_supervised_data_module).
PEER = r"""
import copy, contextlib, io, json, sys
import transformers
from llava import conversation as conversation_lib
from llava.train import train

tokenizer_dir, cases = sys.argv[1], json.loads(sys.stdin.read())
tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, model_max_length=2048, padding_side="right",
                                                       use_fast=False)
tokenizer.pad_token = tokenizer.unk_token
data_args = train.DataArguments(is_multimodal=True)
data_args.mm_use_im_start_end = False
versions = {"plain": "plain", "vicuna_v1": "vicuna_v1"}
out = []
for template, record in cases:
    conversation_lib.default_conversation = conversation_lib.conv_templates[versions[template]]
    sources = [copy.deepcopy(record["conversations"])]
    if "image" in record:
        sources = train.preprocess_multimodal(sources, data_args)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        data = train.preprocess(sources, tokenizer, has_image="image" in record)
    out.append({"id": record["id"], "input_ids": data["input_ids"][0].tolist(),
                "labels": data["labels"][0].tolist(), "printed": printed.getvalue().strip()})
print(json.dumps(out))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llava", type=Path, required=True, help="your checkout of haotian-liu/LLaVA")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "genfeedback-peer",
                        help="where the side venv lives (built once, as benchmarks/llava_peer.py does)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from llava_peer import side_venv

    from llava_plugin.toy import build_zoo

    python = side_venv(args.work / "venv", deepspeed=False)
    zoo = build_zoo(args.work / "zoo-llm", seed=0, parts=["llm"])
    proc = subprocess.run([str(python), "-c", PEER, str(zoo.llm)], input=json.dumps(CASES), capture_output=True,
                          text=True, env={"PYTHONPATH": str(args.llava.resolve()), "PATH": "/usr/bin:/bin"},
                          check=False)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    peer = json.loads(proc.stdout.strip().splitlines()[-1])
    golden = {"vocab_fingerprint": vocab_fingerprint(zoo.llm / "tokenizer.model"), "zoo_seed": 0,
              "made_with": "transformers 4.37.2, tokenizers 0.15.1, sentencepiece 0.1.99 (use_fast=False), "
                           "LLaVA llava/train/train.py preprocess + preprocess_multimodal",
              "cases": [{"template": template, "record": record, **result}
                        for (template, record), result in zip(CASES, peer)]}
    OUT.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {OUT} ({len(CASES)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
