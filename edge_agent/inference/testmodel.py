"""A tiny llama-architecture GGUF with random weights and a real byte-level vocabulary.

It loads and runs in llama.cpp like any model; its text is nonsense, which is exactly what
tests of grammar-constrained generation need: whatever the model wants, the grammar decides
what can come out. Written with the `gguf` package, no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

class MissingExtra(ImportError):
    """A command needs a package of an extra that is not installed."""

    exit_code = 69  # EX_UNAVAILABLE

    def __init__(self, what: str, package: str, extra: str) -> None:
        super().__init__(f"{what} needs the {package} package: install edge-agent[{extra}]")


# SentencePiece token types
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


def vocabulary() -> tuple[list[bytes], list[float], list[int]]:
    """<unk> <s> </s>, the 256 byte tokens, then printable pieces (so text is short)."""
    tokens: list[bytes] = [b"<unk>", b"<s>", b"</s>"]
    types = [UNKNOWN, CONTROL, CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>".encode())
        types.append(BYTE)
    pieces = ["\u2581"] + [chr(c) for c in range(33, 127)] + [
        "\u2581" + w for w in ("the", "a", "is", "ok", "part", "tool", "args", "answer")]
    pieces += ['":', '","', '{"', '"}', "true", "false", "null", "ON", "OFF"]
    for p in pieces:
        tokens.append(p.encode())
        types.append(NORMAL)
    scores = [0.0, 0.0, 0.0] + [-1000.0] * 256 + [-float(len(p)) for p in pieces]
    return tokens, scores, types


def make_test_model(path: str | Path, *, n_embd: int = 64, n_layer: int = 2, n_head: int = 4,
                    n_ff: int = 128, n_ctx: int = 4096, seed: int = 0) -> Path:
    try:  # the `llm` extra's gguf, which brings numpy; not core dependencies
        import gguf
        import numpy as np
    except ImportError as exc:
        raise MissingExtra("make-test-model", "gguf", "llm") from exc

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("edge-agent test model")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all F32
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_tensor("token_embd.weight", w(n_vocab, n_embd))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", w(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", w(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", w(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", w(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    writer.add_tensor("output.weight", w(n_vocab, n_embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
