"""Tests for gpt_rope.py: RoPE's properties, Hugging Face's rotation as reference, the KV cache, training, and the
guard that keeps gpt_rope.py a small patch on top of gpt.py."""

import dataclasses
import difflib
import hashlib
import inspect
import json
import math

import numpy as np
import pytest
import torch

import gpt
import gpt_rope
from conftest import ROOT


def tiny_config(**overrides):
    """2 blocks, 4 heads of 8 channels, a 64-token vocabulary."""
    fields = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=64, dropout=0.0)
    fields.update(overrides)
    return gpt_rope.Config(**fields)


def keys_with_and_without_rope(T=16, **overrides):
    """The keys that gpt_rope's attention caches, and the unrotated keys of gpt.py's attention with the same weights."""
    config = tiny_config(**overrides)
    rope_attention = gpt_rope.CausalSelfAttention(config)
    plain_attention = gpt.CausalSelfAttention(gpt.Config(n_head=config.n_head, n_embd=config.n_embd, dropout=0.0))
    plain_attention.load_state_dict(rope_attention.state_dict())  # the same c_attn and c_proj; the tables are buffers
    x = torch.randn(2, T, config.n_embd)
    _, (rope_keys, rope_values) = rope_attention(x)
    _, (plain_keys, plain_values) = plain_attention(x)
    assert torch.equal(rope_values, plain_values)  # values are never rotated
    return rope_keys, plain_keys  # (B, nh, T, hs) each


def rotate(x, positions, cos, sin):
    """RoPE on vectors x (..., hs) at the given positions: x cos + rotate_half(x) sin."""
    return x * cos[positions] + gpt_rope.rotate_half(x) * sin[positions]


# ----------------------------------------------------------------------------------------------------------------------
# The rotation


def test_position_zero_is_the_identity_rotation():
    cos, sin = gpt_rope.rotary_tables(16, 8, 10000.0)
    assert torch.equal(cos[0], torch.ones(8)) and torch.equal(sin[0], torch.zeros(8))
    rope_keys, plain_keys = keys_with_and_without_rope()
    assert torch.equal(rope_keys[:, :, 0], plain_keys[:, :, 0])  # the first key is left exactly as it was
    assert not torch.allclose(rope_keys[:, :, 1:], plain_keys[:, :, 1:], atol=1e-3)  # every later one turned


def test_rotation_preserves_vector_norms():
    rope_keys, plain_keys = keys_with_and_without_rope()
    assert torch.allclose(rope_keys.norm(dim=-1), plain_keys.norm(dim=-1), rtol=1e-5, atol=1e-6)
    # ... pair by pair, too: each (x[j], x[j + hs/2]) is a 2-D rotation.
    half = rope_keys.size(-1) // 2
    pair_lengths = [k[..., :half] ** 2 + k[..., half:] ** 2 for k in (rope_keys, plain_keys)]
    assert torch.allclose(*pair_lengths, rtol=1e-5, atol=1e-6)


def test_frequencies_follow_theta_to_the_minus_2i_over_d():
    head_size, theta = 8, 500.0
    cos, sin = gpt_rope.rotary_tables(10, head_size, theta)
    m, i = 7, 2
    angle = m * theta ** (-2 * i / head_size)
    for j in (i, i + head_size // 2):  # rotate-half pairing: channels i and i + hs/2 share angle theta_i
        assert math.isclose(cos[m, j].item(), math.cos(angle), abs_tol=1e-6)
        assert math.isclose(sin[m, j].item(), math.sin(angle), abs_tol=1e-6)


def test_score_depends_only_on_the_distance_m_minus_n():
    cos, sin = gpt_rope.rotary_tables(64, 8, 10000.0)
    q, k = torch.randn(8), torch.randn(8)

    def score(m, n):
        return torch.dot(rotate(q, m, cos, sin), rotate(k, n, cos, sin)).item()

    for m, n in ((5, 2), (9, 9), (3, 11)):
        for shift in (1, 17, 40):
            assert math.isclose(score(m, n), score(m + shift, n + shift), rel_tol=1e-4, abs_tol=1e-5)
    assert not math.isclose(score(5, 2), score(5, 3), rel_tol=1e-3)  # a different distance, a different score


def test_model_output_does_not_change_when_every_position_shifts():
    """With RoPE as the only source of position, starting the sequence at position 20 instead of 0 changes nothing."""
    model = gpt_rope.GPT(tiny_config(block_size=48)).eval()
    idx = torch.randint(0, 64, (2, 16))
    logits, _, _ = model(idx)
    for block in model.transformer.h:  # tables that start at position 20
        block.attn.rope_cos, block.attn.rope_sin = block.attn.rope_cos[20:], block.attn.rope_sin[20:]
    shifted_logits, _, _ = model(idx)
    assert torch.allclose(logits, shifted_logits, atol=1e-4)


def test_rotation_equals_hugging_face_llama_and_the_complex_form():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    theta = 500.0
    rope_keys, plain_keys = keys_with_and_without_rope(rope_theta=theta)
    llama_config = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, max_position_embeddings=16,
                                            rope_parameters={"rope_type": "default", "rope_theta": theta})
    cos, sin = LlamaRotaryEmbedding(llama_config)(plain_keys, torch.arange(16)[None])
    _, llama_keys = apply_rotary_pos_emb(plain_keys, plain_keys, cos, sin)
    assert torch.allclose(rope_keys, llama_keys, atol=1e-5)
    # RoFormer's complex form: pair (x[j], x[j + hs/2]) is the complex number z_j, turned by e^(i m theta_j).
    half = plain_keys.size(-1) // 2
    z = torch.complex(plain_keys[..., :half], plain_keys[..., half:])
    angles = torch.outer(torch.arange(16.0), theta ** (-torch.arange(0, 2 * half, 2) / (2 * half)))
    turned = z * torch.polar(torch.ones_like(angles), angles)
    assert torch.allclose(rope_keys, torch.cat([turned.real, turned.imag], dim=-1), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# The model


def test_causality_future_tokens_do_not_change_past_logits():
    model = gpt_rope.GPT(tiny_config()).eval()
    idx = torch.randint(0, 64, (2, 16))
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 64
    logits, _, _ = model(idx)
    logits_changed, _, _ = model(changed)
    assert torch.equal(logits[:, :9], logits_changed[:, :9])
    assert not torch.allclose(logits[:, 9:], logits_changed[:, 9:])


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
def test_kv_cache_rotates_keys_at_their_absolute_positions(attention):
    model = gpt_rope.GPT(tiny_config(attention=attention)).eval()
    idx = torch.randint(0, 64, (2, 16))
    full, _, full_kv = model(idx)
    _, _, past = model(idx[:, :9])
    logits, _, past = model(idx[:, 9:12], past_kv=past)  # three new tokens at once: positions 9, 10, 11
    step_logits = [logits]
    for t in range(12, 16):
        logits, _, past = model(idx[:, t:t + 1], past_kv=past)
        step_logits.append(logits)
    assert torch.allclose(torch.cat(step_logits, dim=1), full[:, 9:], atol=1e-5)
    assert torch.allclose(past[0][0], full_kv[0][0], atol=1e-6)  # cached keys carry their own positions' rotations


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_generation_equals_uncached_generation(temperature):
    model = gpt_rope.GPT(tiny_config()).eval()
    prompt = torch.randint(0, 64, (2, 5))
    outputs = []
    for use_cache in (True, False):  # 40 new tokens in a 16-token window: it slides on the way
        generator = torch.Generator().manual_seed(7)
        outputs.append(model.generate(prompt, 40, temperature=temperature, top_k=20, use_cache=use_cache,
                                      generator=generator))
    assert outputs[0].shape == (2, 45)
    assert torch.equal(outputs[0], outputs[1])


def test_overfits_one_batch():
    model = gpt_rope.GPT(tiny_config())
    idx = torch.randint(0, 64, (4, 16))
    targets = torch.randint(0, 64, (4, 16))  # random targets: only memorising can fit them
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss, _ = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_no_position_weights_and_weights_run_at_a_longer_context():
    model = gpt_rope.GPT(tiny_config()).eval()
    state = model.state_dict()
    assert not any("wpe" in name or "rope" in name for name in state)  # tables are buffers, not saved
    learned = gpt.GPT(gpt.Config(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=64))
    assert model.num_parameters() == learned.num_parameters() - 16 * 32  # gpt.py's wpe: block_size x C weights
    longer = gpt_rope.GPT(tiny_config(block_size=32)).eval()
    longer.load_state_dict(state)  # the same weights serve any block_size
    idx = torch.randint(0, 64, (1, 32))
    assert torch.allclose(longer(idx)[0][:, :16], model(idx[:, :16])[0], atol=1e-5)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(idx)


def test_bad_shape_is_named():
    with pytest.raises(SystemExit, match="even n_embd / n_head \\(now 36 / 4: change --n_embd or --n_head\\)"):
        gpt_rope.check_config(tiny_config(n_embd=36, n_head=4))  # 9 channels per head cannot form pairs
    with pytest.raises(SystemExit, match="--rope_theta above 1 \\(now 0.5\\)"):
        gpt_rope.main(["--rope_theta", "0.5"])


# ----------------------------------------------------------------------------------------------------------------------
# The script: training, checkpoints and sampling through main()


def write_char_dataset(folder, text):
    """train.bin / val.bin / meta.json as prepare_data.py writes them for a character-level dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    itos = sorted(set(text))
    ids = np.array([itos.index(character) for character in text], dtype=np.uint16)
    split = int(0.9 * len(ids))
    ids[:split].tofile(folder / "train.bin")
    ids[split:].tofile(folder / "val.bin")
    meta = {"format": "nanoverse-tokens-v1", "dataset": "tiny", "tokenizer": "char", "vocab_size": len(itos),
            "dtype": "uint16", "train_tokens": split, "val_tokens": len(ids) - split, "eot_id": None,
            "itos": itos, "tokenizer_sha256": hashlib.sha256("".join(itos).encode("utf-8")).hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


TINY_RUN = ["--n_layer", "2", "--n_head", "4", "--n_embd", "32", "--block_size", "16", "--batch_size", "4",
            "--eval_interval", "10", "--log_interval", "5", "--warmup_iters", "2", "--device", "cpu",
            "--rope_theta", "1000"]


def test_main_trains_resumes_and_samples(tmp_path, capsys):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40
    data = write_char_dataset(tmp_path / "data", text)
    out = tmp_path / "out"
    result = gpt_rope.main(TINY_RUN + ["--data_dir", str(data), "--out_dir", str(out), "--max_iters", "10"])
    assert result["step"] == 10 and result["best_val_loss"] < math.log(len(set(text)))
    checkpoint = torch.load(out / "ckpt.pt", weights_only=True)
    assert checkpoint["format"] == "nanoverse-gpt-rope-v1" and checkpoint["config"]["rope_theta"] == 1000.0
    assert not any("wpe" in name for name in checkpoint["model"])
    assert (out / "log.jsonl").read_text().count("val_loss") == 1
    result = gpt_rope.main(TINY_RUN + ["--data_dir", str(data), "--out_dir", str(out), "--max_iters", "20",
                                       "--init_from", "resume"])
    assert result["step"] == 20
    capsys.readouterr()
    texts = gpt_rope.main(["--sample", "--out_dir", str(out), "--start", "First", "--max_new_tokens", "40",
                           "--device", "cpu"])
    assert len(texts) == 1 and texts[0].startswith("First") and len(texts[0]) == 45
    # A gpt.py checkpoint has a position table this model lacks: it is refused with a sentence, not a traceback.
    gpt.main(TINY_RUN[:-2] + ["--data_dir", str(data), "--out_dir", str(tmp_path / "learned"), "--max_iters", "1"])
    with pytest.raises(SystemExit, match="nanoverse-gpt-v1 checkpoint, not nanoverse-gpt-rope-v1"):
        gpt_rope.main(["--sample", "--out_dir", str(tmp_path / "learned"), "--device", "cpu"])


def test_default_out_dir_differs_from_gpt():
    assert gpt_rope.Config().out_dir != gpt.Config().out_dir


# ----------------------------------------------------------------------------------------------------------------------
# The shared code: gpt_rope.py is gpt.py plus RoPE, and nothing else.

# The pieces RoPE has to touch; everything else must stay character for character as in gpt.py.
CHANGED_FOR_ROPE = {"Config", "CausalSelfAttention", "GPT", "check_config", "rotary_tables", "rotate_half"}


def module_pieces(module):
    return {name: inspect.getsource(value) for name, value in vars(module).items()
            if (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == module.__name__}


def test_shared_pieces_are_identical():
    learned, rope = module_pieces(gpt), module_pieces(gpt_rope)
    for name in sorted((learned.keys() | rope.keys()) - CHANGED_FOR_ROPE):
        assert learned.get(name) == rope.get(name), f"{name} differs between gpt.py and gpt_rope.py"
    for name in ("MLP", "Block", "sample_next_token", "train", "evaluate", "parse_args"):
        assert name in rope
    # Attention only gains lines: every line of gpt.py's CausalSelfAttention is still there, in the same order.
    opcodes = difflib.SequenceMatcher(None, learned["CausalSelfAttention"].splitlines(),
                                      rope["CausalSelfAttention"].splitlines(), autojunk=False).get_opcodes()
    assert {tag for tag, *_ in opcodes} == {"equal", "insert"}
    # generate's code (below its docstring) is unchanged too.
    assert learned["GPT"].split("use_cache=False computes")[1] == rope["GPT"].split("use_cache=False computes")[1]
    # Config: the same fields and defaults, except the position encoding and where outputs go.
    learned_fields = {f.name: f.default for f in dataclasses.fields(gpt.Config)}
    rope_fields = {f.name: f.default for f in dataclasses.fields(gpt_rope.Config)}
    assert learned_fields.keys() - rope_fields.keys() == {"pos"}
    assert rope_fields.keys() - learned_fields.keys() == {"rope_theta"}
    assert {name for name in rope_fields.keys() & learned_fields.keys()
            if rope_fields[name] != learned_fields[name]} == {"out_dir"}
    assert gpt_rope.PRESETS == gpt.PRESETS


def test_diff_from_gpt_stays_small():
    """`diff -u gpt.py gpt_rope.py` is the RoPE lesson: at most 80 changed lines (a line edited in place counts
    once)."""
    learned = (ROOT / "gpt.py").read_text().splitlines()
    rope = (ROOT / "gpt_rope.py").read_text().splitlines()
    opcodes = difflib.SequenceMatcher(None, learned, rope, autojunk=False).get_opcodes()
    changed = sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in opcodes if tag != "equal")
    assert 0 < changed <= 80, f"{changed} changed lines between gpt.py and gpt_rope.py"
