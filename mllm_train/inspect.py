"""Show how LLaVA samples are tokenized and masked: one JSON line per sample.

    python -m mllm_train.inspect --data JSON --tokenizer DIR --template plain|vicuna_v1 \
        [--max-length N] [--image-folder DIR] [--limit N] [--tokenization hf|original]

Each line holds the id, the rendered `prompt`, `input_ids` with the image collapsed to a single
IMAGE_TOKEN_INDEX (-200) as original LLaVA does (so the output is comparable with it),
`labels` (-100 where not supervised) and `supervised_text` (each contiguous supervised run,
decoded). `--tokenization original` gives original LLaVA's ids (mllm_train.conversation). A bad
sample prints `{"id", "error"}` instead; the exit status is 1 if any was bad. With --image-folder, each sample's image must exist and decode. --max-length counts the
collapsed image as one position, as original LLaVA's collator does (training counts every
image token).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mllm_train.conversation import (
    TOKENIZATIONS,
    BadSample,
    get_template,
    load_templates,
    tokenize_conversation,
)
from mllm_train.data import load_image, parse_record, read_records


def inspect_records(records: list[dict], tokenizer, template, *, max_length: int | None = None,
                    image_folder: Path | None = None, tokenization: str = "hf"):
    """Yield one dict per record: the tokenized layout, or `{"id", "error"}` for a bad sample."""
    for index, record in enumerate(records):
        sample_id = str(record.get("id", f"#{index}"))
        try:
            sample = parse_record(record, index)
            if image_folder is not None and sample.image is not None:
                load_image(image_folder / sample.image, sample.id)
            tokenized = tokenize_conversation(list(sample.turns), template, tokenizer, sample_id=sample.id,
                                              max_length=max_length, tokenization=tokenization)
        except BadSample as bad:
            yield {"id": sample_id, "error": bad.problem}
            continue
        yield {"id": sample.id, "prompt": tokenized.prompt, "input_ids": tokenized.input_ids,
               "labels": tokenized.labels, "truncated": tokenized.truncated,
               "supervised_text": [tokenizer.decode(run) for run in tokenized.supervised_runs()]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mllm_train.inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The inspect options, for a standalone parser or a `python -m mllm_train inspect` subcommand."""
    parser.add_argument("--data", required=True, help="LLaVA JSON or JSONL file")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory (AutoTokenizer)")
    parser.add_argument("--template", required=True, choices=sorted(load_templates()), help="chat template")
    parser.add_argument("--max-length", type=int, default=None, help="truncate to this many tokens")
    parser.add_argument("--image-folder", default=None, help="check each sample's image exists and decodes")
    parser.add_argument("--limit", type=int, default=None, help="only the first N samples")
    parser.add_argument("--tokenization", choices=TOKENIZATIONS, default="hf",
                        help="hf: as HF's LlavaProcessor (default); original: original LLaVA's ids")


def run(args: argparse.Namespace) -> int:
    """Print the lines; return the exit status (1 if any sample was bad)."""
    from transformers import AutoTokenizer

    template = get_template(args.template)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    records = read_records(args.data)[:args.limit]
    image_folder = Path(args.image_folder) if args.image_folder else None
    bad = 0
    for line in inspect_records(records, tokenizer, template, max_length=args.max_length,
                                image_folder=image_folder, tokenization=args.tokenization):
        bad += "error" in line
        print(json.dumps(line, ensure_ascii=False))
    if bad:
        print(f"{bad} of {len(records)} samples in {args.data} are bad (see their \"error\" lines)", file=sys.stderr)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
