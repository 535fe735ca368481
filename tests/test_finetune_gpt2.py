"""finetune_gpt2.py against the real references: transformers' GPT-2, its logits processors, sacrebleu, safetensors.

Every model here is a tiny random GPT-2 built by transformers itself (dropout 0, float32), saved the way the Hub stores
real ones, then read by the hand-written loader.
"""

import ast
import gzip
import hashlib
import http.server
import json
import math
import re
import socket
import subprocess
import sys
import threading
import urllib.request
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

import finetune_gpt2 as ft
import prepare_data
from conftest import ROOT

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models compute faster on one thread than on two; on a busy machine far faster (no waiting for a core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SHAPES = [  # (n_layer, n_head, n_embd, n_positions, vocab_size[, n_inner])
    (2, 2, 32, 64, 300),
    (3, 4, 48, 32, 257, 96),  # an MLP twice as wide as the residual stream, not GPT-2's four times
    (1, 1, 16, 40, 1000),
]


def tiny_hf_model(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=300, n_inner=None, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                                     vocab_size=vocab_size, n_inner=n_inner, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
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


def save_like_the_hub(model, folder):
    """model.safetensors laid out as openai-community/gpt2's on the Hub: no "transformer." prefix, no lm_head, and
    each block's causal mask stored as a float tensor h.N.attn.bias."""
    from safetensors.torch import save_file

    model.config.save_pretrained(folder)
    state = {key.removeprefix("transformer."): value.contiguous() for key, value in model.state_dict().items()
             if key != "lm_head.weight"}
    n = model.config.n_positions
    for i in range(model.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
    save_file(state, str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})


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
@pytest.mark.parametrize("file_format", ["safetensors", "float16", "bfloat16", "bin", "hub"])
def test_loader_matches_transformers(shape, file_format, tmp_path):
    reference = tiny_hf_model(*shape)
    if file_format in ("safetensors", "float16", "bfloat16"):
        if file_format != "safetensors":  # F16 and BF16 files: the reference computes with the same rounded weights
            reference.to(getattr(torch, file_format)).save_pretrained(tmp_path)
            reference.float()
            header = (tmp_path / "model.safetensors").read_bytes()[:20000]
            assert {"float16": b'"F16"', "bfloat16": b'"BF16"'}[file_format] in header and b'"F32"' not in header
        else:
            reference.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").is_file()
    elif file_format == "hub":
        save_like_the_hub(reference, tmp_path)
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
    assert ft.config_to_hf(model.config)["n_inner"] == reference.config.n_inner  # written back as it was read


def test_saved_folder_loads_in_transformers(tmp_path, gpt2_encoding, data_dir):
    reference = tiny_hf_model(2, 2, 32, 64, 300)
    reference.save_pretrained(tmp_path / "in")
    model = ft.load_hf_folder(tmp_path / "in").eval()
    with torch.no_grad():  # change the weights so that the round trip cannot pass by returning the input folder
        model.transformer.h[0].mlp.c_fc.weight.mul_(1.5)
    ft.save_hf_folder(model, tmp_path / "out", card="# test")
    assert {p.name for p in (tmp_path / "out").iterdir()} == ft.HF_FILES
    assert {p.name for p in tmp_path.iterdir()} == {"in", "out"}  # the folder it was built in is gone
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    idx = torch.randint(0, 300, (2, 30))
    with torch.no_grad():
        assert (reloaded(idx).logits - model(idx)[0]).abs().max().item() <= 1e-5
    # The tokenizer files are GPT-2's own encoder.json and vocab.bpe, and transformers' tokenizer reads them.
    assert (tmp_path / "out" / "vocab.json").read_bytes() == (data_dir / "gpt2" / "encoder.json").read_bytes()
    assert (tmp_path / "out" / "merges.txt").read_bytes() == (data_dir / "gpt2" / "vocab.bpe").read_bytes()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    for text in ("Walking down the road of life", " naïve  café\n\tdon't <|endoftext|>"):
        assert tokenizer(text).input_ids == gpt2_encoding.encode(text, allowed_special="all")


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


def test_validation_loss_is_the_mean_over_tokens_not_over_batches(tmp_path):
    """Six windows in batches of 4 and 2: every token counts once, so the smaller batch weighs half as much."""
    tiny_hf_model(2, 2, 32, 64, 300).save_pretrained(tmp_path)
    model = ft.load_hf_folder(tmp_path)
    tokens = np.random.default_rng(0).integers(0, 300, 16 * 6 + 1)
    windows = torch.from_numpy(tokens.astype(np.int64))
    _, expected, _ = model(windows[:-1].view(6, 16), windows[1:].view(6, 16))
    config = ft.Config(block_size=16, batch_size=4, eval_batches=0)
    assert ft.evaluate_loss(model, tokens, config, torch.device("cpu"), nullcontext()) == \
        pytest.approx(expected.item(), abs=1e-5)


def test_generation_stops_at_end_of_text(tmp_path):
    tiny_hf_model(2, 2, 32, 64, 300).save_pretrained(tmp_path)
    model = ft.load_hf_folder(tmp_path)
    # A tiny random model soon repeats one token forever; banning repeats keeps its continuations varied, so that a
    # padded row cannot look like one that went on by itself.
    greedy = dict(temperature=0.0, no_repeat_ngram_size=1)
    prompt = torch.randint(0, 300, (1, 4))
    free = ft.generate(model, prompt, 10, **greedy)
    stop_id = free[0, 6].item()  # pretend the third generated token is <|endoftext|>
    stopped = ft.generate(model, prompt, 10, eot_id=stop_id, **greedy)
    assert stopped[0, -1].item() == stop_id and stopped.size(1) <= 7
    # In a batch, a row that has ended is padded with <|endoftext|> while the others go on as they would alone.
    for seed in range(100):  # a second prompt whose continuation never writes stop_id: that row must go on
        other = torch.randint(0, 300, (1, 4), generator=torch.Generator().manual_seed(seed))
        other_free = ft.generate(model, other, 10, **greedy)
        if stop_id not in other_free[0, 4:].tolist():
            break
    assert stop_id not in other_free[0, 4:].tolist()
    both = ft.generate(model, torch.cat([prompt, other]), 10, eot_id=stop_id, **greedy)
    end = stopped.size(1)
    assert both.size(1) == 14 and both[0, :end].tolist() == stopped[0].tolist()
    assert both[0, end:].tolist() == [stop_id] * (14 - end) and both[1].tolist() == other_free[0].tolist()


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
    pytest.importorskip("sacrebleu")
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    for line in ["Hello, world.", "1,000.50 and 3-4", "e-mail: a@b.com {x} [y] <z>", "end-\nof line", "&quot;hi&quot;"]:
        assert ft.tokenize_13a(line) == Tokenizer13a()(line).split()


def test_distinct_n():
    assert ft.distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert ft.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert ft.distinct_n(["a b", "c d"], 2) == 1.0
    assert ft.distinct_n(["", "one"], 2) is None  # no bigram anywhere: nothing to measure, not "all repeats"


# ----------------------------------------------------------------------------------------------------------------------
# safetensors by hand


def test_safetensors_round_trip_with_the_library(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(5).half(), "c": torch.randn(2, 2).bfloat16(),
               "empty": torch.zeros(0, 3)}
    with open(tmp_path / "ours.safetensors", "wb") as f:
        ft.write_safetensors(tensors, f)
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
    "shape overflowing 64 bits": (lambda p: crafted(p.parent, {"x": {"dtype": "F32", "shape": [2**62, 2**62, 4],
                                                                     "data_offsets": [0, 8]}}, bytes(8)), "needs"),
    "offsets that are not integers": (lambda p: crafted(p.parent, {"x": {"dtype": "F32", "shape": [2],
                                                                         "data_offsets": [0.0, 8.0]}}, bytes(8)),
                                      "integers"),
    "a gap between tensors": (lambda p: crafted(p.parent, {"x": {"dtype": "F32", "shape": [2],
                                                                 "data_offsets": [4, 12]}}, bytes(12)), "gap"),
    "deeply nested header": (lambda p: p.write_bytes((200_000).to_bytes(8, "little") + b"[" * 200_000), "not JSON"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_safetensors_are_rejected(case, tmp_path):
    path = tmp_path / "bad.safetensors"
    with open(path, "wb") as f:
        ft.write_safetensors({"x": torch.ones(2), "y": torch.ones(3)}, f)
    corrupt, message = MALFORMED[case]
    corrupt(path)
    with pytest.raises(ft.CheckpointError, match=message) as error:
        ft.read_safetensors(path)
    assert str(error.value).count("\n") == 0 and str(path) in str(error.value)


def test_main_names_a_bad_weights_file_in_one_sentence(tmp_path, gpt2_encoding):
    tiny_hf_model().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(SystemExit, match="^error: .* is not a valid safetensors file"):
        ft.main(["--init_from", str(tmp_path), "--mode", "generate", "--out_dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="holds no config.json and model.safetensors"):
        ft.main(["--init_from", str(tmp_path / "missing"), "--mode", "generate", "--out_dir", str(tmp_path / "o")])


# ----------------------------------------------------------------------------------------------------------------------
# Downloading: a local server that answers like the Hub (a redirect with the sha256 in X-Linked-Etag, then the bytes)


@pytest.fixture
def fake_hub():
    payload = bytes(range(256)) * 4000
    state = {"files": {"model.safetensors": payload}, "sha256": hashlib.sha256(payload).hexdigest(), "short": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            name = self.path.rsplit("/", 1)[-1]
            if "/resolve/main/" in self.path:
                self.send_response(302)
                self.send_header("Location", f"/cdn/{name}")
                if name == "model.safetensors":  # a large (LFS) file: the Hub publishes its sha256
                    self.send_header("X-Linked-Etag", f'"{state["sha256"]}"')
                self.end_headers()
                return
            body = state["files"][name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) - state["short"]])  # "short": the connection drops before the end

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["endpoint"] = f"http://127.0.0.1:{server.server_port}"
    state["url"] = f"{state['endpoint']}/repo/resolve/main/model.safetensors"
    yield state
    server.shutdown()


def test_download_verifies_the_bytes_and_never_leaves_a_partial_file(fake_hub, tmp_path, monkeypatch):
    path = ft.download(fake_hub["url"], tmp_path / "ok" / "model.safetensors")
    assert path.read_bytes() == fake_hub["files"]["model.safetensors"] and len(list(path.parent.iterdir())) == 1
    fake_hub["short"] = 1000
    with pytest.raises(ft.CheckpointError, match="stopped after 1,023,000 of 1,024,000 bytes"):
        ft.download(fake_hub["url"], tmp_path / "model.safetensors")
    fake_hub["short"] = 0
    fake_hub["files"]["model.safetensors"] = b"!" + fake_hub["files"]["model.safetensors"][1:]  # not the sha256
    with pytest.raises(ft.CheckpointError, match="corrupt"):
        ft.download(fake_hub["url"], tmp_path / "model.safetensors")

    class CtrlC:  # a progress bar that is interrupted on its first chunk
        def __init__(self, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *args):
            pass

        def update(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr(ft, "tqdm", CtrlC)
    with pytest.raises(KeyboardInterrupt):
        ft.download(fake_hub["url"], tmp_path / "model.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["ok"]  # no .part file left by any of the three


def test_download_names_a_missing_network_and_refuses_a_redirect_to_http(tmp_path):
    with socket.socket() as probe:  # a port on this machine that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ft.CheckpointError, match="check the network, or pass a local Hugging Face folder with "
                                                 "--init_from DIR"):
        ft.download(f"http://127.0.0.1:{port}/config.json", tmp_path / "config.json")
    assert not list(tmp_path.iterdir())
    request = urllib.request.Request("https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors")
    with pytest.raises(urllib.error.URLError, match="refused a redirect from https to http://"):
        ft.Redirects().redirect_request(request, None, 302, "Found", {}, "http://cdn.example/model.safetensors")


def test_a_hub_name_is_downloaded_once_and_loaded(fake_hub, tmp_path, monkeypatch, capsys):
    reference = tiny_hf_model(2, 2, 32, 64, 50257)
    reference.save_pretrained(tmp_path / "published")
    for name in ("config.json", "model.safetensors"):
        fake_hub["files"][name] = (tmp_path / "published" / name).read_bytes()
    fake_hub["sha256"] = hashlib.sha256(fake_hub["files"]["model.safetensors"]).hexdigest()
    monkeypatch.setenv("HF_ENDPOINT", fake_hub["endpoint"])
    run = ["--init_from", "distilgpt2", "--mode", "generate", "--cache_dir", str(tmp_path / "cache"),
           "--max_new_tokens", "3", "--temperature", "0"]
    ft.main(run)
    first = capsys.readouterr().out
    assert {p.name for p in (tmp_path / "cache" / "distilgpt2").iterdir()} == {"config.json", "model.safetensors"}
    fake_hub["files"].clear()  # a second run reads the cache and asks the server for nothing
    ft.main(run)
    assert capsys.readouterr().out == first


# ----------------------------------------------------------------------------------------------------------------------
# Fine-tuning end to end


def test_finetune_lowers_the_loss_and_saves_a_loadable_folder(tmp_path, data_dir, gpt2_encoding, capsys):
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
    evals = {r["eval"]: r["val_loss"] for r in records if "eval" in r}
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
    printed = capsys.readouterr().out  # the samples before and after, side by side
    assert "=== sample 1, base model ===" in printed and "=== sample 1, fine-tuned ===" in printed


def test_command_line_tolerates_a_notebook_and_names_bad_flags(monkeypatch, capsys):
    config, typed = ft.parse_config(["--no-compile", "--max_steps", "5"])
    assert config.compile is False and config.max_steps == 5 and config.init_from == "gpt2"
    assert typed == {"compile": False, "max_steps": 5}  # only what was typed: a resumed run keeps the rest
    for flags, message in ((["--max_step", "3"], "did you mean --max_steps?"),  # never guessed, only suggested
                           (["--mode", "train"], "invalid choice: 'train'"), (["--frobnicate"], "unrecognized")):
        with pytest.raises(SystemExit):
            ft.parse_config(flags)
        assert message in capsys.readouterr().err
    # In a notebook sys.argv holds the kernel's own flags: main() then runs with the defaults (here: stopped at once).
    monkeypatch.setitem(sys.modules, "ipykernel", sys)
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/root/.local/share/jupyter/kernel-1.json"])
    monkeypatch.setattr(ft, "run", lambda config, typed: print(f"run {typed} {config.init_from}"))
    ft.main()
    assert capsys.readouterr().out == "run {} gpt2\n"


# ----------------------------------------------------------------------------------------------------------------------
# Runs, resumes and the mistakes a new user makes: each one is a single sentence, never a traceback


@pytest.fixture
def small_run(tmp_path, data_dir):
    """A tiny GPT-2 (GPT-2's vocabulary, 2 blocks of width 32), ~1,400 training tokens, and the flags of a short run:
    8 windows of 32 tokens per step make 5 steps per epoch."""
    corpus = tmp_path / "verse"
    corpus.mkdir()
    for name in ("adele.txt", "dickinson.txt"):
        text = (data_dir / "poetry_lyrics" / name).read_text(encoding="utf-8", errors="replace")
        (corpus / name).write_text(text[:3000], encoding="utf-8")
    tiny_hf_model(2, 2, 32, 64, 50257).save_pretrained(tmp_path / "base")
    return ["--init_from", str(tmp_path / "base"), "--input", str(corpus), "--block_size", "32", "--batch_size", "8",
            "--eval_batches", "1", "--bleu_samples", "0", "--max_new_tokens", "3", "--num_return_sequences", "1",
            "--log_interval", "1", "--learning_rate", "1e-3", "--warmup_steps", "2"]


def log_records(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def one_sentence(error):
    message = str(error.value.code if isinstance(error.value, SystemExit) else error.value)
    assert "\n" not in message and "Traceback" not in message and "weights_only" not in message, message
    return message


def test_a_fresh_run_never_overwrites_a_run_and_resume_appends_to_its_log(small_run, tmp_path):
    out = tmp_path / "out"
    ft.main(small_run + ["--out_dir", str(out), "--max_steps", "2"])
    first_log = (out / "log.jsonl").read_text()
    weights = (out / "ckpt.pt").read_bytes()
    with pytest.raises(SystemExit) as error:
        ft.main(small_run + ["--out_dir", str(out), "--max_steps", "1"])
    assert "already holds a run (ckpt.pt)" in one_sentence(error) and "--init_from resume" in one_sentence(error)
    assert (out / "ckpt.pt").read_bytes() == weights and (out / "log.jsonl").read_text() == first_log
    ft.main(small_run + ["--out_dir", str(out), "--max_steps", "3", "--init_from", "resume"])
    log = (out / "log.jsonl").read_text()
    assert log.startswith(first_log) and len(log) > len(first_log)
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 3
    (out / "ckpt.pt").unlink()  # no checkpoint any more: a fresh run may use the folder and starts its log anew
    ft.main(small_run + ["--out_dir", str(out), "--max_steps", "1"])
    records = log_records(out)
    assert records[0]["eval"] == "base model" and [r["step"] for r in records if "loss" in r] == [1]


def test_resume_continues_exactly_with_dropout(small_run, tmp_path, monkeypatch, capsys):
    # 8 steps with dropout 0.2, once straight and once stopped by Ctrl-C before step 4 and resumed; the resumed half
    # crosses the end of the first epoch (5 steps). Same masks, same batches: the same weights.
    run = small_run + ["--dropout", "0.2", "--max_steps", "8", "--sample_every", "4"]
    ft.main(run + ["--out_dir", str(tmp_path / "straight")])
    learning_rate_at = ft.learning_rate_at

    def ctrl_c_before_step_4(step, total_steps, config):
        if step == 3:
            raise KeyboardInterrupt
        return learning_rate_at(step, total_steps, config)

    monkeypatch.setattr(ft, "learning_rate_at", ctrl_c_before_step_4)
    with pytest.raises(SystemExit, match="^interrupted$"):  # one line, after the checkpoint is saved
        ft.main(run + ["--out_dir", str(tmp_path / "resumed")])
    monkeypatch.setattr(ft, "learning_rate_at", learning_rate_at)
    assert torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)["step"] == 3
    assert "interrupted: step 3 is saved" in capsys.readouterr().out
    with pytest.raises(SystemExit) as error:  # the optimizer's moments fit only the weights the run trained
        ft.main(run + ["--out_dir", str(tmp_path / "resumed"), "--init_from", "resume", "--freeze_layers", "1"])
    assert "the run was trained with --freeze_layers 0: resume with that" in one_sentence(error)
    ft.main(run + ["--out_dir", str(tmp_path / "resumed"), "--init_from", "resume"])
    printed = capsys.readouterr().out
    straight, resumed = (torch.load(tmp_path / name / "ckpt.pt", weights_only=True) for name in ("straight", "resumed"))
    assert straight["model_config"]["dropout"] == 0.2 and straight["step"] == resumed["step"] == 8
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    logs = [log_records(tmp_path / name) for name in ("straight", "resumed")]
    losses = [[(r["step"], r["loss"]) for r in records if "loss" in r] for records in logs]
    assert losses[0] == losses[1] == sorted(losses[0]) and len(losses[0]) == 8
    # One evaluation per epoch, numbered by the epochs done, the same whether or not the run was interrupted.
    rows = [[(r["epoch"], r["step"], r["val_loss"]) for r in records if "epoch" in r] for records in logs]
    assert rows[0] == rows[1] and [row[:2] for row in rows[0]] == [(1.0, 5), (1.6, 8)]
    # The comparison after a resume is with the checkpoint it started from, and is labelled so.
    assert "| metric | at resume (step 3) | fine-tuned |" in printed and "base model" not in printed
    assert "--- sample at step 4" in printed and "--- sample at step 8" in printed


def test_unreadable_and_foreign_checkpoints_are_named(small_run, tmp_path):
    out = tmp_path / "out"
    ft.main(small_run + ["--out_dir", str(out), "--max_steps", "1"])
    good = (out / "ckpt.pt").read_bytes()
    for broken in (bytes(range(256)) * 20, good[:len(good) // 2]):  # random bytes, a truncated file
        (out / "ckpt.pt").write_bytes(broken)
        with pytest.raises(SystemExit) as error:
            ft.main(small_run + ["--out_dir", str(out), "--init_from", "resume", "--mode", "evaluate"])
        assert "cannot be read as a PyTorch checkpoint" in one_sentence(error)
    config = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "vocab_size": 50257, "dropout": 0.0}
    for content in ({"format": "nanoverse-gpt-v1", "model": {}, "config": config},  # gpt.py's, or an older one
                    {"format": "nanoverse-finetune-gpt2-v1", "model": {}, "config": {}}, torch.zeros(3)):
        torch.save(content, out / "ckpt.pt")
        with pytest.raises(SystemExit) as error:
            ft.main(small_run + ["--out_dir", str(out), "--init_from", "resume"])
        assert "needs a checkpoint of this version of finetune_gpt2.py in" in one_sentence(error)
    with pytest.raises(SystemExit) as error:  # a checkpoint file is no starting point: a Hugging Face folder is
        ft.main(small_run + ["--init_from", str(out / "ckpt.pt"), "--out_dir", str(tmp_path / "other")])
    assert "holds no config.json and model.safetensors" in one_sentence(error)
    assert not (tmp_path / "other").exists()  # refused before anything was written


def test_malformed_hugging_face_folders_are_named(tmp_path):
    reference = tiny_hf_model(2, 2, 32, 64, 300)
    reference.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for bad, message in (([], "JSON list"), (config | {"n_head": 0}, "n_head = 0"),
                         (config | {"n_head": 3}, "divisible"), (config | {"n_layer": "2"}, "n_layer = '2'"),
                         (config | {"model_type": "llama"}, "'llama' model"),
                         (config | {"vocab_size": 10**12}, "vocab_size = 1000000000000"),
                         (config | {"n_embd": 65536, "n_head": 1, "n_layer": 500}, "billion parameters"),
                         (config | {"n_positions": 5_000_000, "n_embd": 8192, "n_head": 1}, "billion parameters"),
                         (config | {"add_cross_attention": True}, "architecture")):
        (tmp_path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ft.CheckpointError, match=message):  # at once: the sizes are refused before allocation
            ft.load_hf_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").unlink()
    torch.save(torch.zeros(3), tmp_path / "pytorch_model.bin")  # one tensor, not a dict of named ones
    with pytest.raises(ft.CheckpointError, match="does not hold a state dict"):
        ft.load_hf_folder(tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--seed", "-1"], "--seed must be from 0 to 4294967295, not -1"),
    (["--eval_batches", "-1"], "--eval_batches must be 0 or more"),
    (["--top_k", "-3"], "--top_k must be 0 or more"),
    (["--max_new_tokens", "-5"], "--max_new_tokens must be at least 1"),
    (["--no_repeat_ngram_size", "-2"], "--no_repeat_ngram_size must be 0 or more"),
    (["--freeze_layers", "-1"], "--freeze_layers must be 0 or more"),
    (["--max_steps", "-2"], "--max_steps must be -1"),
    (["--max_steps", "0"], "--max_steps must be -1"),
    (["--temperature", "-1"], "^error: --temperature must be 0 or more, not -1.0$"),
    (["--top_p", "1.5"], r"^error: --top_p must be in \(0, 1\], not 1.5$"),
    (["--repetition_penalty", "0"], "^error: --repetition_penalty must be more than 0"),
    (["--mode", "evaluate", "--save_hf", "hf"], "^error: --save_hf is written by --mode finetune or generate only$"),
    (["--input", "a.txt", "--data_dir", "data/a"], "^error: pass --input .* or --data_dir .*, not both$"),
])
def test_bad_values_are_named_alone(flags, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):  # before anything is read or downloaded (the network is off)
        ft.main(flags)


def test_devices_that_are_not_there_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    devices = ["gpu", "cpu:0"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:1"])
    for device in devices + ([] if torch.backends.mps.is_available() else ["mps"]):
        with pytest.raises(SystemExit, match=f"^error: --device {device} is not a device of this machine: use auto"):
            ft.main(["--device", device])


def test_mistakes_are_refused_before_any_work(small_run, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "no_text").mkdir()
    (tmp_path / "empty.txt").write_text("\n  \n\n")
    same = tmp_path / "same.txt"
    same.write_text("\n\n".join(["the same verse, sung again and again"] * 40))
    (tmp_path / "chars").mkdir()
    (tmp_path / "chars" / "meta.json").write_text(json.dumps({"format": "nanoverse-tokens-v1", "tokenizer": "char"}))
    cases = [
        (["--input", str(tmp_path / "no_text")], "no_text holds no .txt, .json"),
        (["--input", str(tmp_path / "missing.txt")], "missing.txt: there is no such file or folder"),
        (["--input", str(tmp_path / "empty.txt")], "no passage is left to validate on (the text is empty"),
        (["--input", str(same)], "every passage of it repeats one in the training split"),
        (["--input", "", "--data_dir", str(tmp_path / "missing")], "is not a complete prepare_data.py folder"),
        (["--input", "", "--data_dir", str(tmp_path / "chars")], "holds char tokens, not GPT-2's"),
        (["--save_hf", str(tmp_path / "a_file")], "is a file, not a folder"),
        (["--out_dir", str(tmp_path / "a_file" / "run")], "is a file, not a folder"),
        (["--out_dir", str(tmp_path / "new"), "--init_from", "resume"], "--init_from resume needs a checkpoint"),
    ]
    for flags, message in cases:  # each refused before a model is loaded
        with pytest.raises(SystemExit) as error:
            ft.main(small_run + ["--out_dir", str(tmp_path / "out")] + flags)
        assert message in one_sentence(error) and "model:" not in capsys.readouterr().out, flags
    with pytest.raises(SystemExit) as error:  # known once the model is: refused before a step is trained
        ft.main(small_run + ["--out_dir", str(tmp_path / "out"), "--freeze_layers", "3"])
    assert "--freeze_layers 3 is more than the model's 2 blocks: use a number from 0 to 2" in one_sentence(error)
    assert not re.search(r"training [\d,]+ of", capsys.readouterr().out)
    ft.main(small_run + ["--out_dir", str(tmp_path / "out"), "--freeze_layers", "2", "--max_steps", "1",
                         "--bleu_samples", "500", "--max_new_tokens", "1"])
    printed = capsys.readouterr().out
    assert f"data: {small_run[small_run.index('--input') + 1]} (" in printed
    passages = int(re.search(r"\| BLEU \((\d+) passages\) \|", printed).group(1))
    assert 0 < passages < 500  # as many as the validation split holds
    trainable, total = (int(n.replace(",", "")) for n in re.search(r"training ([\d,]+) of ([\d,]+) parameters",
                                                                  printed).groups())
    assert trainable == 2 * 32 == total - (50257 + 64) * 32 - 2 * 12 * 32 * 32 - 2 * 13 * 32  # only ln_f is left


def test_freeze_layers_trains_only_the_top_of_the_network(small_run, tmp_path):
    out = tmp_path / "out"
    ft.main(small_run + ["--out_dir", str(out), "--freeze_layers", "1", "--max_steps", "2", "--device", "cpu"])
    trained = torch.load(out / "ckpt.pt", weights_only=True)["model"]
    base = ft.load_hf_folder(Path(small_run[small_run.index("--init_from") + 1])).state_dict()
    unchanged = {name for name in base if torch.equal(base[name], trained[name])}
    frozen = {name for name in base if name.startswith(("transformer.wte", "transformer.wpe", "lm_head",
                                                         "transformer.h.0."))}
    assert unchanged == frozen  # the embeddings (and so the tied output layer) and block 0; block 1 and ln_f train


def test_prompt_from_a_file_and_several_sequences(small_run, tmp_path, capsys):
    (tmp_path / "prompt.txt").write_text("Roses are red,\nviolets are", encoding="utf-8")
    generate = small_run + ["--mode", "generate", "--num_return_sequences", "3", "--max_new_tokens", "4"]
    ft.main(generate + ["--prompt", f"FILE:{tmp_path / 'prompt.txt'}", "--temperature", "1.0", "--seed", "3"])
    model_line, printed = capsys.readouterr().out.split("\n", 1)
    samples = printed.split("-" * 80 + "\n")[:-1]
    assert model_line.startswith("model: ")
    assert len(samples) == 3 and all(text.startswith("Roses are red,\nviolets are") for text in samples)
    assert len(set(samples)) > 1  # three draws, not one printed three times
    ft.main(generate + ["--prompt", f"FILE:{tmp_path / 'prompt.txt'}", "--temperature", "0"])
    assert capsys.readouterr().out.count("-" * 80) == 1  # greedy decoding: one continuation, not three copies
    missing = tmp_path / "missing.txt"
    with pytest.raises(SystemExit) as error:
        ft.main(generate + ["--prompt", f"FILE:{missing}"])
    assert one_sentence(error) == f"error: --prompt FILE:{missing}: there is no file {missing}"


def test_max_steps_overrides_epochs_and_the_model_card_says_what_happened(small_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --mode generate below leaves --out_dir at its default: it must not be created
    out = tmp_path / "out"
    ft.main(small_run + ["--out_dir", str(out), "--epochs", "1", "--max_steps", "7", "--save_hf", str(out / "hf")])
    checkpoint = torch.load(out / "ckpt.pt", weights_only=True)
    assert checkpoint["step"] == 7 and [r["epoch"] for r in log_records(out) if "epoch" in r] == [1.0, 1.4]
    card = (out / "hf" / "README.md").read_text()
    assert "7 optimizer steps (1.4 epochs) on `verse`" in card and "# GPT-2 fine-tuned from `base`" in card
    assert str(tmp_path) not in card and "| metric | base model | fine-tuned |" in card
    assert "license: mit" in card and "copyrighted" in card and "base_model:" not in card  # a local folder
    ft.main(small_run + ["--out_dir", str(out), "--init_from", "resume", "--max_steps", "9"])  # --save_hf: the run's
    card = (out / "hf" / "README.md").read_text()
    assert "9 optimizer steps (1.8 epochs)" in card and "fine-tuned from `base`" in card and "`resume`" not in card
    assert "| metric | at resume (step 7) | fine-tuned |" in card and str(tmp_path) not in card
    # --block_size longer than the model's context (64) matters only to training and evaluation, not to sampling.
    ft.main(small_run + ["--mode", "generate", "--save_hf", str(tmp_path / "converted"), "--block_size", "128"])
    card = (tmp_path / "converted" / "README.md").read_text()
    assert "Converted from `base` without any training" in card and "## Training" not in card
    assert not (tmp_path / "out-finetune").exists() and str(tmp_path) not in card


def test_the_stats_table_says_why_a_cell_is_empty():
    before = {"val_loss": 4.0, "val_ppl": 54.6, "bleu": None, "distinct_1": None, "distinct_2": None}
    table = ft.comparison_table(before, before, ("base model", "fine-tuned"), ft.Config(bleu_samples=0), [])
    assert "| BLEU | n/a [1] | n/a [1] |" in table and table.endswith("\n[1] --bleu_samples 0 skips it")
    after = {"val_loss": 3.5, "val_ppl": 33.1, "bleu": 1.25, "distinct_1": 0.5, "distinct_2": None}
    table = ft.comparison_table(after | {"distinct_1": 0.4}, after, ("a", "b"), ft.Config(), [("x\n", "y")] * 3)
    assert "| BLEU (3 passages) | 1.25 | 1.25 |" in table and "| distinct-1 | 0.400 | 0.500 |" in table
    assert "| distinct-2 | n/a [1] | n/a [1] |" in table and "[1] the greedy continuations hold no 2-word" in table
    cells = [cell.strip() for line in table.splitlines() if line.startswith("|") for cell in line.split("|")[1:-1]]
    assert "-" not in cells and "" not in cells  # no bare dash, no blank


def test_loss_picture_starts_with_the_base_model(small_run, tmp_path, monkeypatch):
    import matplotlib.axes

    plotted, plot = [], matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *args, **kwargs: plotted.append((args, kwargs))
                        or plot(self, *args, **kwargs))
    out = tmp_path / "out"
    ft.main(small_run + ["--out_dir", str(out), "--max_steps", "3", "--log_interval", "1"])
    (train_steps, _), train_kwargs = plotted[0]
    (val_steps, val_losses, _), _ = plotted[1]
    base = next(r for r in log_records(out) if r.get("eval") == "base model")
    assert list(train_steps) == [1, 2, 3] and val_steps[0] == 0 and val_losses[0] == base["val_loss"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_process_ddp_with_gloo(small_run, tmp_path, monkeypatch):
    """torchrun with two CPU processes (the gloo backend): each reads its own share of the windows, so an epoch takes
    half the steps; only the first process logs, evaluates and saves."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "finetune_gpt2.py"), *small_run, "--out_dir", str(out), "--max_steps", "3", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = log_records(out)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]  # one process logs, not two
    assert [r["epoch"] for r in records if "epoch" in r] == [1.0, 1.5]  # 2 x 8 windows per step: 2 steps an epoch
    assert [r["eval"] for r in records if "eval" in r] == ["base model", "fine-tuned"]
    checkpoint = torch.load(out / "ckpt.pt", weights_only=True)
    base = ft.load_hf_folder(Path(small_run[small_run.index("--init_from") + 1]))
    trained = checkpoint["model"]["transformer.h.0.mlp.c_fc.weight"]
    assert checkpoint["step"] == 3 and trained.shape == base.transformer.h[0].mlp.c_fc.weight.shape
    assert not torch.equal(trained, base.transformer.h[0].mlp.c_fc.weight)  # the averaged gradients trained it
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it: generating once per process would be no use
    with pytest.raises(SystemExit, match="--mode generate runs in one process: start it with python, not torchrun"):
        ft.main(small_run + ["--mode", "generate"])


def test_learning_rate_schedule_matches_its_docstring():
    config = ft.Config(learning_rate=1.0, warmup_steps=4)
    rates = [ft.learning_rate_at(step, 10, config) for step in range(11)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]  # warmup: the first step already moves
    assert rates[4] == 1.0 and rates[9] == pytest.approx(1 / 6) and rates[10] == 0.0  # 0 only after the last step
    assert all(a > b for a, b in zip(rates[4:], rates[5:]))


def test_bleu_passages_reach_into_long_documents():
    config = ft.Config(bleu_samples=5, bleu_prompt_lines=2, bleu_reference_lines=1)
    documents = ["\n".join(f"{name}{i}" for i in range(n)) for name, n in (("a", 7), ("b", 3), ("c", 2))]
    pairs = ft.bleu_passages(documents, config)
    # First the opening of every document long enough, then the next passage of each, round by round.
    assert pairs == [("a0\na1\n", "a2"), ("b0\nb1\n", "b2"), ("a3\na4\n", "a5")]
    assert ft.bleu_passages(documents, ft.Config(bleu_samples=1, bleu_prompt_lines=2, bleu_reference_lines=1)) == \
        [("a0\na1\n", "a2")]


def test_the_last_validation_document_of_a_token_folder_is_kept(tmp_path, gpt2_encoding):
    eot = gpt2_encoding.eot_token
    documents = [f"poem number {i}\nline two\nline three\nline four" for i in range(3)]
    val = []
    for i, document in enumerate(documents):  # prepare_data.py puts <|endoftext|> between documents only
        val += ([eot] if i else []) + gpt2_encoding.encode_ordinary(document)
    train = (gpt2_encoding.encode_ordinary(" ".join(documents)) + [eot]) * 20
    np.array(train, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.array(val, dtype=np.uint16).tofile(tmp_path / "val.bin")
    (tmp_path / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "format": "nanoverse-tokens-v1",
                                                    "dtype": "uint16", "vocab_size": 50257,
                                                    "tokenizer_sha256": hashlib.sha256(b"gpt2").hexdigest()}))
    config = ft.Config(data_dir=str(tmp_path), block_size=8)
    _, _, val_documents, source = ft.load_corpus(config, gpt2_encoding)
    assert val_documents == documents and source == str(tmp_path)
    tiny_hf_model(1, 2, 16, 16, 50257).save_pretrained(tmp_path / "base")  # and a run trains on the token files
    ft.main(["--init_from", str(tmp_path / "base"), "--data_dir", str(tmp_path), "--out_dir", str(tmp_path / "out"),
             "--block_size", "8", "--max_steps", "2", "--bleu_samples", "2", "--max_new_tokens", "2"])
    evals = [r for r in log_records(tmp_path / "out") if "eval" in r]
    assert [r["eval"] for r in evals] == ["base model", "fine-tuned"] and evals[0]["bleu"] is not None


def test_resume_without_data_options_continues_on_the_same_data(small_run, tmp_path, capsys):
    out, corpus = tmp_path / "out", small_run[small_run.index("--input") + 1]
    ft.main(small_run + ["--out_dir", str(out), "--max_steps", "1"])
    without_input = [arg for i, arg in enumerate(small_run) if "--input" not in small_run[max(i - 1, 0):i + 1]]
    assert "--input" not in without_input and corpus not in without_input
    capsys.readouterr()
    ft.main(without_input + ["--out_dir", str(out), "--max_steps", "2", "--init_from", "resume"])
    assert f"data: {corpus} (" in capsys.readouterr().out
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 2
    checkpoint = (out / "ckpt.pt").read_bytes()  # --mode evaluate measures the run's model, and trains nothing
    ft.main(["--out_dir", str(out), "--init_from", "resume", "--mode", "evaluate", "--max_new_tokens", "2"])
    assert "at resume (step 2): val_loss" in capsys.readouterr().out and (out / "ckpt.pt").read_bytes() == checkpoint
    assert log_records(out)[-1]["eval"] == "at resume (step 2)"


def test_save_hf_writes_only_into_its_own_folder(small_run, tmp_path, monkeypatch):
    clone = tmp_path / "clone"  # `--save_hf .` in a clone of this repository: a README.md and a config.json of its own
    clone.mkdir()
    (clone / "README.md").write_text("# the project's own README\n")
    (clone / "config.json").write_text('{"mine": true}\n')
    before = {p.name: p.read_bytes() for p in clone.iterdir()}
    for mode in ("finetune", "generate"):
        with pytest.raises(SystemExit) as error:
            ft.main(small_run + ["--mode", mode, "--out_dir", str(tmp_path / "out"), "--save_hf", str(clone)])
        assert "holds other files: choose a new or empty folder" in one_sentence(error)
    assert {p.name: p.read_bytes() for p in clone.iterdir()} == before and not (tmp_path / "out").exists()
    hf = tmp_path / "hf"
    hf.mkdir()  # an empty folder is fine, and so is a folder holding exactly an earlier --save_hf output
    ft.main(small_run + ["--mode", "generate", "--save_hf", str(hf)])
    converted = (hf / "model.safetensors").read_bytes()
    ft.main(small_run + ["--out_dir", str(tmp_path / "out"), "--max_steps", "2", "--save_hf", str(hf)])
    assert (hf / "model.safetensors").read_bytes() != converted and "fine-tuned" in (hf / "README.md").read_text()
    finetuned = {p.name: p.read_bytes() for p in hf.iterdir()}
    write = ft.write_safetensors

    def ctrl_c_while_writing(tensors, file):
        write(tensors, file)
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "write_safetensors", ctrl_c_while_writing)
    with pytest.raises(SystemExit, match="interrupted"):
        ft.main(small_run + ["--mode", "generate", "--save_hf", str(hf)])
    assert {p.name: p.read_bytes() for p in hf.iterdir()} == finetuned  # the earlier model, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "clone", "hf", "out", "verse"]  # nothing half-made


def test_temporary_files_get_unique_names_and_are_removed_on_failure(tmp_path):
    names = []

    def half_written(error):
        def write(file):
            names.extend(p.name for p in tmp_path.iterdir() if p.name != "ckpt.pt")
            file.write(b"half a checkpoint")
            raise error
        return write

    (tmp_path / "ckpt.pt").write_bytes(b"the last good checkpoint")
    for error in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            ft.write_atomically(tmp_path / "ckpt.pt", half_written(error))
        assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # the temporary file is gone, the old one kept
        assert (tmp_path / "ckpt.pt").read_bytes() == b"the last good checkpoint"
    assert len(names) == len(set(names)) == 2  # a new name each time, so two runs never share one
    (tmp_path / "ckpt.pt.tmp").symlink_to(tmp_path / "elsewhere")  # a link at a name the old code used is not followed
    ft.write_atomically(tmp_path / "ckpt.pt", lambda file: file.write(b"new"))
    assert (tmp_path / "ckpt.pt").read_bytes() == b"new" and not (tmp_path / "elsewhere").exists()


def test_default_corpus_is_tiny_shakespeare(small_run, tmp_path, monkeypatch, capsys, data_dir):
    shipped = tmp_path / "datasets" / "tinyshakespeare.txt.gz"
    if prepare_data.SHAKESPEARE["shipped"].is_file():  # the repository ships the text: the one of the sha256
        text = gzip.decompress(prepare_data.SHAKESPEARE["shipped"].read_bytes())
        assert hashlib.sha256(text).hexdigest() == prepare_data.SHAKESPEARE["sha256"]
    shipped.parent.mkdir()
    shipped.write_bytes(gzip.compress((data_dir / "tinyshakespeare" / "input.txt").read_bytes()[:20000]))
    monkeypatch.setitem(prepare_data.SHAKESPEARE, "shipped", shipped)  # finetune_gpt2.py reads it through prepare_data
    without_input = [arg for i, arg in enumerate(small_run) if "--input" not in small_run[max(i - 1, 0):i + 1]]
    ft.main(without_input + ["--out_dir", str(tmp_path / "out"), "--max_steps", "1", "--temperature", "0",
                             "--max_new_tokens", "2"])
    printed = capsys.readouterr().out
    assert f"data: {shipped} (" in printed and "ROMEO:" in printed


def test_data_of_another_tokenizer_is_refused_before_the_model_is_fetched(tmp_path):
    folder = tmp_path / "chars"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"format": "nanoverse-tokens-v1", "tokenizer": "char"}))
    with pytest.raises(SystemExit) as error:  # gpt2 would be a download: the data is refused first
        ft.main(["--init_from", "gpt2", "--data_dir", str(folder), "--out_dir", str(tmp_path / "out")])
    assert "holds char tokens, not GPT-2's" in one_sentence(error)


def test_long_documents_are_cut_into_passages_without_false_endings(gpt2_encoding):
    song = "\n".join(f"line {i}" for i in range(70))  # no blank line: one document, cut into 32 + 32 + 6 lines
    passages = ft.split_documents(f"{song}\n\nchorus\nchorus again\n\nchorus\nchorus again\n")
    assert [ends for _, ends in passages] == [False, False, True, True, True]
    eot = gpt2_encoding.eot_token
    assert ft.encode_documents(passages[:3], gpt2_encoding).tolist() == \
        gpt2_encoding.encode_ordinary(song) + [eot]  # the cuts are newlines again: one text, one <|endoftext|>
    for seed in range(20):
        train, val = ft.split_passages(passages, 0.4, seed)
        train_texts = [text for text, _ in train]
        assert not any(text in train_texts for text, _ in val)  # the repeated chorus is never scored as unseen
        for side in (train, val):
            texts = [text for text, _ in side]
            for (text, ends), following in zip(side, texts[1:] + [None]):
                i = [p for p, _ in passages].index(text)
                # A passage goes on without <|endoftext|> only into the passage that really follows it.
                assert ends or (i + 1 < len(passages) and passages[i + 1][0] == following)


def test_resume_with_no_flags_keeps_the_run_and_a_ctrl_c_inside_a_step_is_exact(small_run, tmp_path, monkeypatch):
    # Settings unlike the defaults, then a resume that types none of them: it must still be the same run. The Ctrl-C
    # lands inside step 4, after the first block has drawn its dropout masks.
    run = small_run + ["--dropout", "0.2", "--max_steps", "7", "--grad_accum_steps", "2", "--batch_size", "4",
                       "--seed", "7", "--eval_batches", "2"]
    ft.main(run + ["--out_dir", str(tmp_path / "straight")])
    mlp_forward, calls = ft.MLP.forward, []

    def ctrl_c_inside_step_4(self, x):
        if self.training:
            calls.append(1)
            if len(calls) == 2 * 2 * 3 + 2:  # 2 blocks x 2 micro-steps per step; step 4's second MLP
                raise KeyboardInterrupt
        return mlp_forward(self, x)

    monkeypatch.setattr(ft.MLP, "forward", ctrl_c_inside_step_4)
    with pytest.raises(SystemExit, match="interrupted"):
        ft.main(run + ["--out_dir", str(tmp_path / "resumed")])
    monkeypatch.setattr(ft.MLP, "forward", mlp_forward)
    assert torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)["step"] == 3
    ft.main(["--init_from", "resume", "--out_dir", str(tmp_path / "resumed")])
    straight, resumed = (torch.load(tmp_path / name / "ckpt.pt", weights_only=True) for name in ("straight", "resumed"))
    assert resumed["step"] == 7
    for field in ("batch_size", "grad_accum_steps", "seed", "learning_rate", "warmup_steps", "dropout", "max_steps",
                  "block_size", "input", "init_from", "bleu_samples"):
        assert resumed["config"][field] == straight["config"][field], field
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
