"""Bad model files and prompts are one-line `InputError`s (exit 2); bugs are not disguised as them.

Bad input is made with the real libraries (a GGUF written by `gguf`, a checkpoint saved by
transformers, a chat template that refuses); a bug is a library call monkeypatched to raise
RuntimeError / TypeError, which must reach the caller as itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from ggufkit import tiny_tensors, write_gguf
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from e2llm.cli import main
from e2llm.errors import InputError
from e2llm.runtime import text, weights
from e2llm.runtime.text import encode_chat
from e2llm.runtime.weights import ModelSource, load_stage_weights, prepare_model

BUGS = [RuntimeError, TypeError]


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    """A real fast tokenizer whose chat template refuses a system message."""
    vocab = {w: i for i, w in enumerate(["[UNK]", "user", "assistant", "system", ":", "hi"])}
    tok = PreTrainedTokenizerFast(tokenizer_object=_word_level(vocab), unk_token="[UNK]")
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
        "{% endif %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    return tok


def _word_level(vocab: dict[str, int]) -> Tokenizer:
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return tok


def test_chat_template_refusal_is_an_input_error(tokenizer: PreTrainedTokenizerFast) -> None:
    assert encode_chat(tokenizer, [{"role": "user", "content": "hi"}]) == [1, 4, 5, 2, 4]
    with pytest.raises(InputError, match=r"messages.*no system role"):
        encode_chat(tokenizer, [{"role": "system", "content": "hi"}])


@pytest.mark.parametrize("bug", BUGS)
def test_bug_while_encoding_a_chat_propagates(
    tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch, bug: type[Exception]
) -> None:
    def broken(*args: object, **kwargs: object) -> list[int]:
        raise bug("a bug, not the user's messages")

    monkeypatch.setattr(tokenizer, "apply_chat_template", broken)
    with pytest.raises(bug, match="a bug"):
        text.encode_chat(tokenizer, [{"role": "user", "content": "hi"}])


def _without(name: str) -> dict[str, tuple[int, ...]]:
    return {k: v for k, v in tiny_tensors().items() if k != name}


def _truncated(path: Path) -> Path:
    write_gguf(path)
    path.write_bytes(path.read_bytes()[:-100])
    return path


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (
            lambda p: write_gguf(p, tensors=_without("blk.0.ffn_down.weight")),
            ["blk.0.ffn_down.weight", "missing"],
        ),
        (
            lambda p: write_gguf(p, tensors={**tiny_tensors(), "blk.0.attn_k.weight": (8, 8)}),
            ["blk.0.attn_k.weight", "shape must be [8, 4]", "[8, 8]"],
        ),
        (_truncated, ["blk.0.ffn_down.weight", "past the end of the file"]),
    ],
)
def test_broken_gguf_is_refused_before_converting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make, fragments: list[str]
) -> None:
    path = make(tmp_path / "tiny.gguf")

    def never(src: ModelSource, out: Path) -> None:
        raise AssertionError("a broken file must be refused before the conversion")

    monkeypatch.setattr(weights, "_convert_gguf", never)
    with pytest.raises(InputError) as err:
        prepare_model(ModelSource.from_path(path), cache_dir=tmp_path / "cache")
    assert all(f in str(err.value) for f in [str(path), *fragments]), str(err.value)
    assert not (tmp_path / "cache").exists()


def test_gguf_transformers_cannot_convert_is_an_input_error(tmp_path: Path) -> None:
    """The tiny GGUF has every tensor but no tokenizer: transformers' own refusal (a ValueError)
    becomes one InputError naming the file, and no partial cache is left."""
    path = write_gguf(tmp_path / "no-tokenizer.gguf")
    with pytest.raises(InputError, match=r"no-tokenizer\.gguf.*cannot convert the GGUF.*tokenizer"):
        prepare_model(ModelSource.from_path(path), cache_dir=tmp_path / "cache")
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]


@pytest.mark.parametrize("bug", BUGS)
def test_bug_during_conversion_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bug: type[Exception]
) -> None:
    def broken(src: ModelSource, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise bug("a bug in the converter")

    monkeypatch.setattr(weights, "_convert_gguf", broken)
    with pytest.raises(bug, match="a bug in the converter"):
        prepare_model(ModelSource.from_path(write_gguf(tmp_path / "t.gguf")), cache_dir=tmp_path / "cache")
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]  # cleaned up all the same


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    cfg = LlamaConfig(
        num_hidden_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=2, vocab_size=20
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.mark.parametrize(
    ("file", "content", "fragment"),
    [
        ("generation_config.json", "{broken", "generation_config.json: cannot read"),
        ("generation_config.json", "[1, 2]", "generation_config.json: must be a JSON object"),
        ("model.safetensors", "not a safetensors file", "model.safetensors: cannot read the checkpoint"),
        ("model.safetensors.index.json", '{"metadata": {}}', "weight_map"),
    ],
)
def test_broken_checkpoint_files_are_input_errors(
    checkpoint: Path, file: str, content: str, fragment: str
) -> None:
    (checkpoint / file).write_text(content)
    with pytest.raises(InputError, match=re.escape(fragment)):
        load_stage_weights(prepare_model(ModelSource.from_path(checkpoint)), 0, 2, True, True)


@pytest.mark.parametrize("bug", BUGS)
def test_bug_while_reading_a_checkpoint_propagates(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch, bug: type[Exception]
) -> None:
    prepared = prepare_model(ModelSource.from_path(checkpoint))

    def broken(*args: object, **kwargs: object) -> None:
        raise bug("a bug in the reader")

    monkeypatch.setattr(weights, "safe_open", broken)
    with pytest.raises(bug, match="a bug in the reader"):
        load_stage_weights(prepared, 0, 2, True, True)


def test_serve_with_a_broken_gguf_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    path = write_gguf(tmp_path / "tiny.gguf", tensors=_without("output_norm.weight"))
    assert main(["serve", "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err and "output_norm.weight" in err, err


def test_config_json_that_is_not_an_object(checkpoint: Path) -> None:
    (checkpoint / "config.json").write_text(json.dumps([1]))
    with pytest.raises(InputError, match=r"config\.json: must be a JSON object"):
        prepare_model(ModelSource.from_path(checkpoint))
