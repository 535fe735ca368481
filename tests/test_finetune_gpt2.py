"""finetune_gpt2.py against the real references: transformers' GPT-2, its logits processors, sacrebleu, safetensors.

Every model here is a tiny random GPT-2 built by transformers itself (dropout 0, float32), saved the way the Hub stores
real ones, then read by the hand-written loader.
"""

import ast
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

import finetune_gpt2 as ft
from conftest import ROOT

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

SHAPES = [  # (n_layer, n_head, n_embd, n_positions, vocab_size)
    (2, 2, 32, 64, 300),
    (3, 4, 48, 32, 257),
    (1, 1, 16, 40, 1000),
]


def tiny_hf_model(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=300, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                                     vocab_size=vocab_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # random LayerNorm gains and biases too, so that a mapping mistake cannot hide
        for name, param in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


def save_as_bin(model, folder):
    """An old-style checkpoint: pytorch_model.bin with the causal-mask buffers that early transformers stored."""
    model.config.save_pretrained(folder)
    state = dict(model.state_dict())
    for i, block in enumerate(model.transformer.h):
        n = model.config.n_positions
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, Path(folder) / "pytorch_model.bin")


# ----------------------------------------------------------------------------------------------------------------------
# The shared block


def class_sources(path, names=("CausalSelfAttention", "MLP", "Block")):
    text = path.read_text()
    return {node.name: ast.get_source_segment(text, node) for node in ast.parse(text).body
            if isinstance(node, ast.ClassDef) and node.name in names}


def test_block_is_identical_to_gpt_py():
    if not (ROOT / "gpt.py").exists():
        pytest.skip("gpt.py is not written yet")
    ours, master = class_sources(ROOT / "finetune_gpt2.py"), class_sources(ROOT / "gpt.py")
    assert set(ours) == {"CausalSelfAttention", "MLP", "Block"}
    for name in ours:
        assert ours[name] == master[name], f"{name} differs from gpt.py's copy: change both in one commit"


# ----------------------------------------------------------------------------------------------------------------------
# Loading Hugging Face checkpoints: same logits, loss and greedy text


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("file_format", ["safetensors", "bin"])
def test_loader_matches_transformers(shape, file_format, tmp_path):
    reference = tiny_hf_model(*shape)
    if file_format == "safetensors":
        reference.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").is_file()
    else:
        save_as_bin(reference, tmp_path)
    model = ft.load_hf_folder(tmp_path).eval()
    vocab_size, n_positions = shape[4], shape[3]
    idx = torch.randint(0, vocab_size, (3, n_positions))
    with torch.no_grad():
        expected = reference(idx, labels=idx)  # transformers shifts the labels inside: position t predicts t + 1
        logits, loss, _ = model(idx[:, :-1], idx[:, 1:])
    assert (logits - expected.logits[:, :-1]).abs().max().item() <= 1e-5
    assert abs(loss.item() - expected.loss.item()) <= 1e-5
    prompt = idx[:1, :5]
    expected_tokens = reference.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0,
                                         eos_token_id=None, attention_mask=torch.ones_like(prompt))
    assert ft.generate(model, prompt, 20, temperature=0.0).tolist() == expected_tokens.tolist()


def test_saved_folder_loads_in_transformers(tmp_path, gpt2_encoding):
    reference = tiny_hf_model(2, 2, 32, 64, 300)
    reference.save_pretrained(tmp_path / "in")
    model = ft.load_hf_folder(tmp_path / "in").eval()
    with torch.no_grad():  # change the weights so that the round trip cannot pass by returning the input folder
        model.transformer.h[0].mlp.c_fc.weight.mul_(1.5)
    ft.save_hf_folder(model, tmp_path / "out", gpt2_encoding, card="# test\n")
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"config.json", "model.safetensors", "vocab.json",
                                                              "merges.txt", "README.md"}
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    idx = torch.randint(0, 300, (2, 30))
    with torch.no_grad():
        assert (reloaded(idx).logits - model(idx)[0]).abs().max().item() <= 1e-5
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_tokenizer_files_equal_gpt2s_own(gpt2_encoding, data_dir):
    vocab, merges = ft.gpt2_vocab_and_merges(gpt2_encoding)
    assert vocab == json.loads((data_dir / "gpt2" / "encoder.json").read_text(encoding="utf-8"))
    lines = (data_dir / "gpt2" / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith("#version") and merges == [line for line in lines[1:] if line]


def test_init_from_gpt_py_checkpoint(tmp_path):
    if not (ROOT / "gpt.py").exists():
        pytest.skip("gpt.py is not written yet")
    import dataclasses

    import gpt

    config = gpt.Config(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=50257, dropout=0.0)
    trained = gpt.GPT(config).eval()
    path = tmp_path / "ckpt.pt"
    torch.save({"format": gpt.CHECKPOINT_FORMAT, "model": trained.state_dict(), "config": dataclasses.asdict(config),
                "meta": {"tokenizer": "gpt2"}}, path)
    model = ft.load_gpt_py_checkpoint(path).eval()
    idx = torch.randint(0, 50257, (2, 32))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], trained(idx)[0])
    char_checkpoint = {"model": trained.state_dict(), "config": dataclasses.asdict(config) | {"vocab_size": 65},
                       "meta": {"tokenizer": "char"}}
    torch.save(char_checkpoint, path)
    with pytest.raises(ft.CheckpointError, match="tokenizer"):
        ft.load_gpt_py_checkpoint(path)


def test_mismatched_weights_are_named(tmp_path):
    tiny_hf_model(2, 2, 32, 64, 300).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"n_layer": 3}))
    with pytest.raises(ft.CheckpointError, match=r"missing \['transformer\.h\.2\."):
        ft.load_hf_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config | {"n_embd": 64}))
    with pytest.raises(ft.CheckpointError, match="shape"):
        ft.load_hf_folder(tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# Generation


def test_logits_processors_match_transformers():
    from transformers.generation.logits_process import (NoRepeatNGramLogitsProcessor,
                                                        RepetitionPenaltyLogitsProcessor, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    logits = torch.randn(4, 50)
    # Few distinct ids, and one row that repeats itself outright: plenty of repeated tokens and n-grams.
    context = torch.cat([torch.randint(0, 12, (3, 15)), torch.tensor([[1, 2, 3] * 5])])
    for penalty in (1.3, 0.7):
        expected = RepetitionPenaltyLogitsProcessor(penalty)(context, logits.clone())
        assert torch.equal(ft.apply_repetition_penalty(logits, context, penalty), expected)
    for n in (1, 2, 3, 16):
        expected = NoRepeatNGramLogitsProcessor(n)(context, logits.clone())
        ours = ft.ban_repeated_ngrams(logits, context, n)
        assert torch.equal(ours, expected), n
        assert n == 16 or torch.isinf(ours).any()  # the test ids repeat, so something was banned
    for k in (1, 5, 50):
        assert torch.equal(ft.keep_top_k(logits, k), TopKLogitsWarper(k)(context, logits.clone()))
    for p in (0.1, 0.5, 0.9):
        assert torch.equal(torch.isinf(ft.keep_top_p(logits, p)), torch.isinf(TopPLogitsWarper(p)(context, logits)))


def test_top_k_1_sampling_is_greedy_and_cache_changes_nothing(tmp_path):
    tiny_hf_model(2, 2, 32, 16, 300).save_pretrained(tmp_path)
    model = ft.load_hf_folder(tmp_path)
    prompt = torch.randint(0, 300, (2, 5))
    greedy = ft.generate(model, prompt, 30, temperature=0.0)  # 35 tokens: the 16-token window slides twice
    sampled = ft.generate(model, prompt, 30, temperature=1.3, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(greedy, sampled)
    for options in (dict(temperature=0.0, repetition_penalty=1.5, no_repeat_ngram_size=2),
                    dict(temperature=0.9, top_p=0.8)):
        cached = ft.generate(model, prompt, 30, generator=torch.Generator().manual_seed(2), **options)
        uncached = ft.generate(model, prompt, 30, use_cache=False, generator=torch.Generator().manual_seed(2),
                               **options)
        assert torch.equal(cached, uncached)


def test_generation_stops_at_end_of_text(tmp_path):
    tiny_hf_model(2, 2, 32, 64, 300).save_pretrained(tmp_path)
    model = ft.load_hf_folder(tmp_path)
    prompt = torch.randint(0, 300, (1, 4))
    free = ft.generate(model, prompt, 10, temperature=0.0)
    stop_id = free[0, 6].item()  # pretend the third generated token is <|endoftext|>
    stopped = ft.generate(model, prompt, 10, eot_id=stop_id, temperature=0.0)
    assert stopped[0, -1].item() == stop_id and stopped.size(1) <= 7


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation


BLEU_CASES = [
    (["the cat sat on the mat"], ["the cat sat on the mat"]),
    (["the cat is on the mat"], ["there is a cat on the mat"]),
    (["a b c d e f", "hello world"], ["a b c x e f", "hello there world"]),
    (["short"], ["a much longer reference sentence here"]),
    (["it's 3.14, isn't it? (yes) - \"quoted\" & 1,000-2"], ["it is 3.14 , is it not ? yes 1,000 - 2"]),
    (["Walking down the road of life\nI saw a light"], ["Walking down the road of love\nI saw the light"]),
    (["completely different words", "nothing matches"], ["other text", "no overlap here at all"]),
    (["one two three four five six seven", "six seven"], ["one two three four five six seven eight", "six"]),
]


@pytest.mark.parametrize("hypotheses, references", BLEU_CASES)
def test_bleu_equals_sacrebleu(hypotheses, references):
    sacrebleu = pytest.importorskip("sacrebleu")
    expected = sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert ft.corpus_bleu(hypotheses, references) == pytest.approx(expected, abs=1e-9)


def test_13a_tokens_equal_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    for line in ["Hello, world.", "1,000.50 and 3-4", "e-mail: a@b.com {x} [y] <z>", "end-\nof line", "&quot;hi&quot;"]:
        assert ft.tokenize_13a(line) == Tokenizer13a()(line).split()
    assert sacrebleu  # imported for the skip


def test_distinct_n():
    assert ft.distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert ft.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert ft.distinct_n(["a b", "c d"], 2) == 1.0


# ----------------------------------------------------------------------------------------------------------------------
# safetensors by hand


def test_safetensors_round_trip_with_the_library(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(5).half(), "c": torch.randn(2, 2).bfloat16(),
               "empty": torch.zeros(0, 3)}
    ft.write_safetensors(tensors, tmp_path / "ours.safetensors")
    for name, tensor in safetensors_torch.load_file(tmp_path / "ours.safetensors").items():
        assert torch.equal(tensor, tensors[name]) and tensor.dtype == tensors[name].dtype
    safetensors_torch.save_file(tensors, tmp_path / "theirs.safetensors")
    for name, tensor in ft.read_safetensors(tmp_path / "theirs.safetensors").items():
        assert torch.equal(tensor, tensors[name]) and tensor.dtype == tensors[name].dtype


def crafted(tmp_path, header, data=b"", length=None):
    body = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes((len(body) if length is None else length).to_bytes(8, "little") + body + data)
    return path


GOOD_TENSOR = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
MALFORMED = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-5]), "outside"),
    "shorter than 8 bytes": (lambda p: p.write_bytes(b"\x01\x02"), "8-byte"),
    "oversized header": (lambda p: crafted(p.parent, {"x": GOOD_TENSOR}, bytes(8), length=1 << 40), "header claims"),
    "random bytes": (lambda p: p.write_bytes(bytes(range(256)) * 3), "header claims|not JSON"),
    "header not JSON": (lambda p: p.write_bytes((10).to_bytes(8, "little") + b"not json!!"), "not JSON"),
    "out-of-range offsets": (lambda p: crafted(p.parent, {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                                               bytes(8)), "outside"),
    "overlapping offsets": (lambda p: crafted(p.parent, {"x": GOOD_TENSOR,
                                                         "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                                              bytes(12)), "overlaps"),
    "unknown dtype": (lambda p: crafted(p.parent, {"x": {"dtype": "I8", "shape": [8], "data_offsets": [0, 8]}},
                                        bytes(8)), "dtype"),
    "shape does not match bytes": (lambda p: crafted(p.parent, {"x": {"dtype": "F32", "shape": [3],
                                                                      "data_offsets": [0, 8]}}, bytes(8)), "needs"),
    "negative shape": (lambda p: crafted(p.parent, {"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
                                         bytes(8)), "non-negative"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_safetensors_are_rejected(case, tmp_path):
    path = tmp_path / "bad.safetensors"
    ft.write_safetensors({"x": torch.ones(2), "y": torch.ones(3)}, path)
    corrupt, message = MALFORMED[case]
    corrupt(path)
    with pytest.raises(ft.CheckpointError, match=message) as error:
        ft.read_safetensors(path)
    assert str(error.value).count("\n") == 0 and str(path) in str(error.value)


def test_main_names_a_bad_weights_file_in_one_sentence(tmp_path):
    tiny_hf_model().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(SystemExit, match="not a valid safetensors file"):
        ft.main(["--init_from", str(tmp_path), "--mode", "generate", "--out_dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="neither"):
        ft.main(["--init_from", str(tmp_path / "missing"), "--mode", "generate", "--out_dir", str(tmp_path / "o")])


# ----------------------------------------------------------------------------------------------------------------------
# Downloading: a local server that answers like the Hub (redirect + X-Linked-Etag, byte ranges)


@pytest.fixture
def fake_hub():
    import hashlib

    payload = bytes(range(256)) * 4000
    state = {"payload": payload, "sha256": hashlib.sha256(payload).hexdigest(), "ranges": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.startswith("/repo/resolve/"):
                self.send_response(302)
                self.send_header("Location", "/cdn/blob")
                self.send_header("X-Linked-Etag", f'"{state["sha256"]}"')
                self.end_headers()
                return
            start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
            state["ranges"].append(start)
            body = state["payload"][start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_port}/repo/resolve/main/model.safetensors"
    yield state
    server.shutdown()


def test_download_verifies_and_resumes(fake_hub, tmp_path):
    path = ft.download(fake_hub["url"], tmp_path / "model.safetensors")
    assert path.read_bytes() == fake_hub["payload"]
    partial = tmp_path / "again" / "model.safetensors.incomplete"
    partial.parent.mkdir()
    partial.write_bytes(fake_hub["payload"][:1000])
    path = ft.download(fake_hub["url"], tmp_path / "again" / "model.safetensors")
    assert path.read_bytes() == fake_hub["payload"] and fake_hub["ranges"][-1] == 1000 and not partial.exists()


def test_download_rejects_a_corrupt_file_and_a_missing_network(fake_hub, tmp_path):
    fake_hub["payload"] = fake_hub["payload"][:-1] + b"!"  # the server now sends bytes that do not match the sha256
    with pytest.raises(ft.CheckpointError, match="corrupt"):
        ft.download(fake_hub["url"], tmp_path / "model.safetensors")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ft.CheckpointError, match="local Hugging Face folder"):
        ft.download("https://huggingface.co/openai-community/gpt2/resolve/main/config.json", tmp_path / "c.json")


# ----------------------------------------------------------------------------------------------------------------------
# Fine-tuning end to end


def test_finetune_lowers_the_loss_and_saves_a_loadable_folder(tmp_path, data_dir, gpt2_encoding):
    corpus = tmp_path / "lyrics"
    corpus.mkdir()
    for name in ("adele.txt", "dickinson.txt"):  # a slice of two files: songs and poems
        text = (data_dir / "poetry_lyrics" / name).read_text(encoding="utf-8", errors="replace")
        (corpus / name).write_text(text[:12000], encoding="utf-8")
    tiny_hf_model(2, 2, 32, 64, 50257).save_pretrained(tmp_path / "base")
    out = tmp_path / "out"
    ft.main(["--init_from", str(tmp_path / "base"), "--input", str(corpus), "--out_dir", str(out),
             "--save_hf", str(out / "hf"), "--max_steps", "12", "--block_size", "64", "--batch_size", "8",
             "--learning_rate", "3e-3", "--warmup_steps", "2", "--dropout", "0", "--eval_batches", "4",
             "--bleu_samples", "2", "--max_new_tokens", "8", "--num_return_sequences", "1", "--log_interval", "4"])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = {r["eval"]: float(r["val loss"]) for r in records if "eval" in r}
    assert evals["fine-tuned"] < evals["base model"] - 0.1
    steps = [r for r in records if "loss" in r]
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert (out / "ckpt.pt").is_file() and (out / "loss.png").is_file()
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out / "hf").eval()
    ours = ft.load_hf_folder(out / "hf").eval()
    idx = torch.tensor([gpt2_encoding.encode("Walking down the road of life")])
    with torch.no_grad():
        assert (reloaded(idx).logits - ours(idx)[0]).abs().max().item() <= 1e-5
    checkpoint = torch.load(out / "ckpt.pt", weights_only=True)
    assert checkpoint["step"] == 12 and torch.equal(checkpoint["model"]["transformer.wte.weight"],
                                                    ours.transformer.wte.weight)
    assert "base_model" not in (out / "hf" / "README.md").read_text()  # a local folder is no Hub base model


def test_command_line_tolerates_a_notebook_and_names_bad_flags():
    config = ft.parse_config(["-f", "/root/.local/share/jupyter/runtime/kernel-1.json", "--no-compile"])
    assert config.compile is False and config.init_from == "gpt2"
    with pytest.raises(SystemExit, match="top_p"):
        ft.parse_config(["--top_p", "0"])
    with pytest.raises(SystemExit, match="--mode must be one of"):
        ft.parse_config(["--mode", "train"])
