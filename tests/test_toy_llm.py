"""The zoo's tiny vicuna: hub layout, LLaMA tokenizer behaviour, determinism."""
import json

import pytest
import torch

from llava_plugin.toy import Zoo
from llava_plugin.toy.llm import TOKENIZER_VOCAB_SIZE, scene_corpus, train_sentencepiece, write_llm


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    zoo = Zoo(root=tmp_path_factory.mktemp("llm_zoo"))
    write_llm(zoo, seed=0)
    return zoo.llm


@pytest.fixture(scope="module")
def tokenizer(llm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llm_dir)


def test_vicuna_layout(llm_dir):
    names = {p.name for p in llm_dir.iterdir()}
    assert {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "config.json",
            "generation_config.json", "model.safetensors.index.json"} <= names
    assert "tokenizer.json" not in names  # vicuna ships only the sentencepiece model
    assert sum(n.endswith("-of-00002.safetensors") for n in names) == 2
    config = json.loads((llm_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["vocab_size"], config["max_position_embeddings"]) == (TOKENIZER_VOCAB_SIZE, 2048)
    assert json.loads((llm_dir / "generation_config.json").read_text())["eos_token_id"] == 2


def test_tokenizer_behaves_like_llama(tokenizer):
    assert len(tokenizer) == TOKENIZER_VOCAB_SIZE
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<unk>", "<s>", "</s>", "<0x00>"]
    ids = tokenizer("a red square").input_ids
    assert ids[0] == 1 and ids[-1] != 2  # BOS prepended, no EOS appended
    assert tokenizer.convert_ids_to_tokens(ids)[1] == "\u2581a"  # dummy prefix
    # `</s>` written in text is the EOS token, not characters
    ids = tokenizer("ASSISTANT: red.</s>USER:").input_ids
    assert ids.count(2) == 1
    # digits are split one per token; unseen characters fall back to bytes and round-trip
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("2048", add_special_tokens=False).input_ids)
    assert [p.strip("\u2581") for p in pieces if p.strip("\u2581")] == ["2", "0", "4", "8"]
    text = "über 🙂"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text
    # the scene words are whole pieces (a trained BPE, not characters)
    assert len(tokenizer("the blue circle", add_special_tokens=False).input_ids) == 3


def test_model_loads_and_runs(llm_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llm_dir)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    batch = tokenizer(["USER: What color is the star? ASSISTANT:"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch.input_ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_sentencepiece_training_is_deterministic(tmp_path):
    import sentencepiece as spm

    def pieces(path):  # the model file also records its own path, so compare the vocabularies
        processor = spm.SentencePieceProcessor(model_file=str(path))
        return [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]

    corpus = scene_corpus(seed=3, n_sentences=500)
    first = pieces(train_sentencepiece(corpus, tmp_path / "a.model", vocab_size=400, seed=3))
    assert len(first) == 400
    assert pieces(train_sentencepiece(corpus, tmp_path / "b.model", vocab_size=400, seed=3)) == first
    other = train_sentencepiece(scene_corpus(seed=4, n_sentences=500), tmp_path / "c.model", 400, 4)
    assert pieces(other) != first
    with pytest.raises(ValueError, match=r"\.model"):
        train_sentencepiece(corpus, tmp_path / "d.spm", vocab_size=400)


def test_open_zoo_builds_once_then_loads(tmp_path, capsys):
    from llava_plugin.toy import open_zoo

    built = open_zoo(tmp_path / "zoo", parts=["llm"])
    assert capsys.readouterr().err.startswith(f"building the tiny zoo in {tmp_path / 'zoo'}\n")
    written = (tmp_path / "zoo" / "zoo.json").stat().st_mtime_ns
    again = open_zoo(tmp_path / "zoo", parts=["llm"])
    assert again.llm == built.llm and again.clip is None and capsys.readouterr().err == ""
    assert (tmp_path / "zoo" / "zoo.json").stat().st_mtime_ns == written  # read, not rewritten
