"""Tests for gpt.py: the model's properties, equality with Hugging Face's GPT-2, training, resuming, DDP, sampling."""

import dataclasses
import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import gpt
from conftest import ROOT


def tiny_config(**overrides):
    """2 blocks, 32 channels, a 64-token vocabulary: big enough to have every part, small enough to be instant."""
    fields = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=64, dropout=0.0)
    fields.update(overrides)
    return gpt.Config(**fields)


# ----------------------------------------------------------------------------------------------------------------------
# The model


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_causality_future_tokens_do_not_change_past_logits(pos):
    model = gpt.GPT(tiny_config(pos=pos)).eval()
    idx = torch.randint(0, 64, (2, 16))
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 64  # change token 9 only
    logits, _, _ = model(idx)
    logits_changed, _, _ = model(changed)
    assert torch.equal(logits[:, :9], logits_changed[:, :9])  # positions before 9 cannot see it
    assert not torch.allclose(logits[:, 9:], logits_changed[:, 9:])  # positions from 9 on do


def test_sdpa_path_equals_manual_path():
    torch.manual_seed(0)
    sdpa = gpt.GPT(tiny_config(attention="sdpa")).eval()
    manual = gpt.GPT(tiny_config(attention="manual")).eval()
    manual.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, 64, (3, 16))
    assert torch.allclose(sdpa(idx)[0], manual(idx)[0], atol=1e-5)
    # With a cache and several new tokens at once, the mask is the shifted triangle on both paths.
    _, _, past = sdpa(idx[:, :10])
    _, _, past_manual = manual(idx[:, :10])
    assert torch.allclose(sdpa(idx[:, 10:], past_kv=past)[0], manual(idx[:, 10:], past_kv=past_manual)[0], atol=1e-5)


def test_kv_cache_gives_the_same_logits_as_the_full_sequence():
    model = gpt.GPT(tiny_config()).eval()
    idx = torch.randint(0, 64, (2, 16))
    full, _, _ = model(idx)
    _, _, past = model(idx[:, :11])
    step_logits = []
    for t in range(11, 16):
        logits, _, past = model(idx[:, t:t + 1], past_kv=past)
        step_logits.append(logits)
    assert past[0][0].shape == (2, 4, 16, 8)  # (B, nh, T, hs) per layer
    assert torch.allclose(torch.cat(step_logits, dim=1), full[:, 11:], atol=1e-5)


def test_loss_at_initialisation_is_about_ln_vocab():
    model = gpt.GPT(tiny_config(vocab_size=64))
    idx = torch.randint(0, 64, (8, 16))
    targets = torch.randint(0, 64, (8, 16))
    _, loss, _ = model(idx, targets)
    assert abs(loss.item() - math.log(64)) < 0.1  # small init: nearly uniform predictions


def test_weights_are_tied_and_initialised_like_gpt2():
    model = gpt.GPT(gpt.Config(n_layer=8, n_head=4, n_embd=256, vocab_size=512, block_size=64))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002
    assert abs(model.transformer.h[0].mlp.c_proj.weight.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert model.transformer.h[0].attn.c_attn.bias.abs().sum().item() == 0


def test_presets_have_the_advertised_sizes():
    with torch.device("meta"):  # shapes only, no memory
        cpu = gpt.GPT(gpt.Config(**gpt.PRESETS["cpu"], vocab_size=65))
        gpt2 = gpt.GPT(gpt.Config(**gpt.PRESETS["gpt2"], vocab_size=50257))
        gpt_small = gpt.GPT(gpt.Config(**gpt.PRESETS["gpt-small"], vocab_size=50257))
        shakespeare = gpt.GPT(gpt.Config(**gpt.PRESETS["shakespeare"], vocab_size=65))
    assert 0.75e6 < cpu.num_parameters() < 0.85e6
    assert gpt2.num_parameters() == 124_439_808  # GPT-2 small, as Hugging Face counts it
    assert 145e6 < gpt_small.num_parameters() < 160e6
    assert 10.6e6 < shakespeare.num_parameters() < 10.9e6


def test_overfits_one_batch():
    model = gpt.GPT(tiny_config())
    idx = torch.randint(0, 64, (4, 16))
    targets = torch.randint(0, 64, (4, 16))  # random targets: only memorising can fit them
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss, _ = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_sinusoidal_table_matches_the_formula():
    model = gpt.GPT(tiny_config(pos="sinusoidal", n_embd=8, n_head=2, block_size=10))
    table = model.sinusoid
    pos, i = 7, 1
    assert table.shape == (10, 8)
    assert math.isclose(table[pos, 2 * i].item(), math.sin(pos / 10000 ** (2 * i / 8)), abs_tol=1e-6)
    assert math.isclose(table[pos, 2 * i + 1].item(), math.cos(pos / 10000 ** (2 * i / 8)), abs_tol=1e-6)
    assert "sinusoid" not in model.state_dict() and "transformer.wpe.weight" not in model.state_dict()  # fixed


def test_mlp_ratio_sets_the_feed_forward_width():
    model = gpt.GPT(tiny_config(mlp_ratio=2))
    assert model.transformer.h[0].mlp.c_fc.weight.shape == (2 * 32, 32)  # GPT-2's n_inner = mlp_ratio * n_embd
    assert model.transformer.h[0].mlp.c_proj.weight.shape == (32, 2 * 32)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_generation_equals_uncached_generation(temperature):
    model = gpt.GPT(tiny_config()).eval()
    prompt = torch.randint(0, 64, (2, 5))
    # 40 new tokens with a 16-token window: the window slides several times on the way.
    outputs = []
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(7)
        outputs.append(model.generate(prompt, 40, temperature=temperature, top_k=20, use_cache=use_cache,
                                      generator=generator))
    assert outputs[0].shape == (2, 45)
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("block_size", [1, 3])
def test_generation_slides_a_window_of_one_or_three_tokens(block_size):
    model = gpt.GPT(tiny_config(block_size=block_size)).eval()
    prompt = torch.randint(0, 64, (2, 2))
    outputs = [model.generate(prompt, 7, temperature=0.0, use_cache=use_cache) for use_cache in (True, False)]
    assert outputs[0].shape == (2, 9) and torch.equal(outputs[0], outputs[1])


def test_sampling_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    context = torch.tensor([[0]])
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):  # top_k=1 and a tiny top_p both leave only the best token
        assert gpt.sample_next_token(logits, context, 1.0, 1, 1.0, 1.0, generator).item() == 0
        assert gpt.sample_next_token(logits, context, 1.0, 0, 0.01, 1.0, generator).item() == 0
    draws = [gpt.sample_next_token(logits, context, 1.0, 2, 1.0, 1.0, generator).item() for _ in range(200)]
    assert set(draws) == {0, 1}  # top_k=2 keeps exactly the two best
    # A strong repetition penalty on the seen token 0 hands the greedy choice to token 1.
    assert gpt.sample_next_token(logits, context, 0.0, 0, 1.0, 2.0).item() == 1


def test_top_p_keeps_the_smallest_set_that_reaches_it():
    logits = torch.tensor([[0.5, 0.25, 0.25]]).log()
    context, generator = torch.tensor([[0]]), torch.Generator().manual_seed(0)
    draws = {gpt.sample_next_token(logits, context, 1.0, 0, 0.5, 1.0, generator).item() for _ in range(200)}
    assert draws == {0}  # token 0 alone already reaches 0.5: the 0.25s are cut
    draws = {gpt.sample_next_token(logits, context, 1.0, 0, 0.9, 1.0, generator).item() for _ in range(200)}
    assert draws == {0, 1, 2}  # 0.5 + 0.25 falls short of 0.9: all three stay


def hf_gpt2_from(model):
    """A Hugging Face GPT2LMHeadModel holding the same weights; its Conv1D layers store weights transposed."""
    transformers = pytest.importorskip("transformers")
    c = model.config
    hf_config = transformers.GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                        n_layer=c.n_layer, n_head=c.n_head, n_inner=c.mlp_ratio * c.n_embd,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                        layer_norm_epsilon=c.layer_norm_epsilon, activation_function="gelu_new",
                                        bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    ours = model.state_dict()
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    with torch.no_grad():
        for name, param in hf.state_dict().items():
            if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
                continue  # old transformers versions keep the causal mask as a buffer
            source = ours[name]
            param.copy_(source.t() if name.endswith(transposed) else source)
    return hf


@pytest.mark.parametrize("mlp_ratio", [4, 2])
def test_equals_hugging_face_gpt2_logits_loss_and_greedy_text(mlp_ratio):
    model = gpt.GPT(tiny_config(mlp_ratio=mlp_ratio)).eval()
    hf = hf_gpt2_from(model)
    idx = torch.randint(0, 64, (2, 16))
    logits, loss, _ = model(idx, idx)
    hf_out = hf(idx, labels=idx)  # Hugging Face shifts the labels itself
    assert torch.allclose(logits, hf_out.logits, atol=1e-5)
    _, shifted_loss, _ = model(idx[:, :-1], idx[:, 1:])
    assert torch.allclose(shifted_loss, hf_out.loss, atol=1e-5)
    prompt = idx[:1, :4]
    ours = model.generate(prompt, 10, temperature=0.0)
    theirs = hf.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)


# ----------------------------------------------------------------------------------------------------------------------
# Training, checkpoints, sampling and the command line, on token files made here as prepare_data.py would write them.

TEXT = ("First Citizen: Before we proceed any further, hear me speak.\nAll: Speak, speak.\n"
        "First Citizen: You are all resolved rather to die than to famish?\nAll: Resolved. resolved.\n") * 40


def write_char_dataset(folder, text=TEXT):
    """train.bin / val.bin / meta.json per the nanoverse-tokens-v1 contract: sorted characters, a 90/10 split, and the
    tokenizer's fingerprint, the sha256 of the characters in order."""
    folder.mkdir(parents=True, exist_ok=True)
    itos = sorted(set(text))
    ids = np.array([itos.index(c) for c in text], dtype=np.uint16)
    split = int(0.9 * len(ids))
    ids[:split].tofile(folder / "train.bin")
    ids[split:].tofile(folder / "val.bin")
    meta = {"format": "nanoverse-tokens-v1", "dataset": "tiny", "tokenizer": "char", "vocab_size": len(itos),
            "dtype": "uint16", "train_tokens": split, "val_tokens": len(ids) - split, "eot_id": None, "itos": itos,
            "tokenizer_sha256": hashlib.sha256("".join(itos).encode("utf-8")).hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def write_bpe_dataset(folder, text, vocab_size):
    """The same contract for a bpe.py tokenizer: bpe.model beside the ids, its file's sha256 as the fingerprint."""
    import bpe

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = bpe.Tokenizer.train(text, vocab_size)
    tokenizer.save(str(folder / "bpe"))
    ids = np.array(tokenizer.encode(text, allowed_special="all"), dtype=np.uint16)
    split = int(0.9 * len(ids))
    ids[:split].tofile(folder / "train.bin")
    ids[split:].tofile(folder / "val.bin")
    meta = {"format": "nanoverse-tokens-v1", "tokenizer": "bpe", "bpe_model": "bpe.model",
            "vocab_size": len(tokenizer.vocab), "dtype": "uint16",
            "tokenizer_sha256": hashlib.sha256((folder / "bpe.model").read_bytes()).hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


TINY_FLAGS = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "16", "--batch_size", "4",
              "--learning_rate", "3e-3", "--warmup_iters", "2"]


def test_learning_rate_schedule_and_weight_decay_groups():
    config = gpt.Config(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=100, lr_decay_iters=100)
    assert gpt.learning_rate_at(0, config) == pytest.approx(1e-4)  # warmup: the first step already moves
    assert gpt.learning_rate_at(9, config) == pytest.approx(1e-3)
    assert gpt.learning_rate_at(55, config) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way down the cosine
    assert gpt.learning_rate_at(100, config) == gpt.learning_rate_at(500, config) == 1e-4  # then flat
    model = gpt.GPT(tiny_config())
    optimizer = gpt.make_optimizer(model, tiny_config(weight_decay=0.1), torch.device("cpu"))
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert optimizer.param_groups[0]["weight_decay"] == 0.1 and optimizer.param_groups[1]["weight_decay"] == 0.0
    assert id(model.lm_head.weight) in decayed and id(model.transformer.h[0].attn.c_attn.weight) in decayed
    assert id(model.transformer.h[0].ln_1.weight) not in decayed and id(model.transformer.h[0].attn.c_attn.bias) \
        not in decayed


def read_log(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
def test_evaluate_is_the_mean_token_loss_on_every_device(device):
    if device == "cuda" and not torch.cuda.is_available() or device == "mps" and not torch.backends.mps.is_available():
        pytest.skip(f"no {device} here")
    torch.manual_seed(0)
    model = gpt.GPT(tiny_config()).eval()
    tokens = np.random.default_rng(0).integers(0, 64, 100).astype(np.uint16)
    windows = torch.from_numpy(tokens[:16 * 6 + 1].astype(np.int64))  # windows start at 0, 16, ..., 80: six of them
    x, y = windows[:-1].view(6, 16), windows[1:].view(6, 16)
    expected = model(x, y)[1].item()
    config = tiny_config(batch_size=4)  # batches of 4 and 2 windows: the mean weighs every token equally
    got = gpt.evaluate(model.to(device), tokens, config, torch.device(device), gpt.nullcontext())
    assert got == pytest.approx(expected, abs=1e-5)


def test_smoke_training_writes_checkpoint_log_picture_and_samples(tmp_path, capsys):
    data = write_char_dataset(tmp_path / "data")
    out = tmp_path / "out"
    result = gpt.main(["--data_dir", str(data), "--out_dir", str(out), *TINY_FLAGS, "--max_iters", "30",
                       "--eval_interval", "15", "--log_interval", "5", "--sample_interval", "15", "--grad_accum_steps",
                       "2", "--dropout", "0.1"])
    printed = capsys.readouterr().out
    assert "ms_per_step" in printed and "tokens_per_sec" in printed and "val_loss" in printed
    checkpoint = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)
    assert checkpoint["format"] == "nanoverse-gpt-v1" and checkpoint["step"] == 30
    assert checkpoint["tokenizer_sha256"] == json.loads((data / "meta.json").read_text())["tokenizer_sha256"]
    assert checkpoint["data_dir"] == str(data.resolve()) and checkpoint["meta"]["tokenizer"] == "char"
    assert not any(key.startswith("_orig_mod") for key in checkpoint["model"])  # the plain module's names
    log = read_log(out)
    assert [r["step"] for r in log if "loss" in r] == [5, 10, 15, 20, 25, 30]
    val_losses = [r["val_loss"] for r in log if "val_loss" in r]
    assert len(val_losses) == 2 and val_losses[-1] < math.log(checkpoint["config"]["vocab_size"])  # it learned
    assert result["best_val_loss"] == pytest.approx(min(val_losses)) and result["val_loss"] == val_losses[-1]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(path.name for path in out.iterdir()) == ["ckpt.pt", "log.jsonl", "loss.png"]  # no temporary files

    texts = gpt.main(["--sample", "--out_dir", str(out), "--start", "All:", "--num_samples", "2",
                      "--max_new_tokens", "25", "--top_k", "5", "--top_p", "0.9", "--repetition_penalty", "1.1"])
    assert len(texts) == 2 and all(t.startswith("All:") and len(t) == 4 + 25 for t in texts)
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("First")
    again = gpt.main(["--sample", "--out_dir", str(out), "--start", f"FILE:{prompt_file}", "--max_new_tokens", "5",
                      "--temperature", "0"])
    assert again[0].startswith("First") and len(again[0]) == 10


def test_resume_reproduces_the_next_losses_exactly(tmp_path):
    data = write_char_dataset(tmp_path / "data")
    common = ["--data_dir", str(data), *TINY_FLAGS, "--dropout", "0.1", "--lr_decay_iters", "8", "--eval_interval",
              "4", "--log_interval", "1"]
    gpt.main([*common, "--out_dir", str(tmp_path / "straight"), "--max_iters", "8"])
    gpt.main([*common, "--out_dir", str(tmp_path / "split"), "--max_iters", "4"])
    gpt.main([*common, "--out_dir", str(tmp_path / "split"), "--max_iters", "8", "--init_from", "resume"])
    straight = [r["loss"] for r in read_log(tmp_path / "straight") if "loss" in r]
    split = [r["loss"] for r in read_log(tmp_path / "split") if "loss" in r]
    assert len(straight) == 8 and split == straight  # steps 5-8 after the resume equal the uninterrupted run


def test_a_resume_that_types_only_the_folder_keeps_the_run_settings(tmp_path, capsys):
    data = write_char_dataset(tmp_path / "data")
    common = ["--data_dir", str(data), *TINY_FLAGS, "--dropout", "0.1", "--lr_decay_iters", "8", "--eval_interval",
              "4", "--log_interval", "1", "--learning_rate", "2e-3", "--warmup_iters", "2", "--seed", "5"]
    gpt.main([*common, "--out_dir", str(tmp_path / "straight"), "--max_iters", "8"])
    gpt.main([*common, "--out_dir", str(tmp_path / "split"), "--max_iters", "4"])
    capsys.readouterr()
    gpt.main(["--out_dir", str(tmp_path / "split"), "--init_from", "resume"])  # max_iters 4: done, not 2500 steps
    assert [r["step"] for r in read_log(tmp_path / "split") if "loss" in r] == [1, 2, 3, 4]
    assert "--lr_decay_iters 4 keeps min_lr" in capsys.readouterr().out  # how to go on past the end of the schedule
    gpt.main(["--out_dir", str(tmp_path / "split"), "--init_from", "resume", "--max_iters", "8"])
    straight = [r["loss"] for r in read_log(tmp_path / "straight") if "loss" in r]
    split = [r["loss"] for r in read_log(tmp_path / "split") if "loss" in r]
    assert len(straight) == 8 and split == straight  # the same learning rates, dropout, seed and batches


def test_a_resumed_finished_run_can_stay_at_min_lr(tmp_path):
    data = write_char_dataset(tmp_path / "data")
    common = ["--data_dir", str(data), "--out_dir", str(tmp_path / "out"), *TINY_FLAGS, "--log_interval", "1",
              "--min_lr", "1e-4", "--max_new_tokens", "1"]
    gpt.main([*common, "--max_iters", "4"])
    gpt.main([*common, "--max_iters", "6", "--init_from", "resume", "--lr_decay_iters", "4"])
    assert [r["lr"] for r in read_log(tmp_path / "out") if "lr" in r][4:] == [1e-4, 1e-4]  # steps 5 and 6


def interrupt(monkeypatch, name, when):
    """Make gpt.<name> raise KeyboardInterrupt on its when-th call, as a Ctrl-C there would."""
    original, calls = getattr(gpt, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == when:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(gpt, name, interrupted)


@pytest.mark.parametrize("name, when", [("get_batch", 2 * 4 + 2), ("evaluate", 1)])
def test_ctrl_c_saves_the_last_finished_step_and_the_resumed_run_goes_on_exactly(tmp_path, monkeypatch, name, when):
    """Ctrl-C inside step 5 (after its second micro-batch), or in the evaluation after step 4: the checkpoint holds
    step 4, the interrupt is raised again (main turns it into exit status 130), and since batches and dropout follow
    from the step, the resumed run's losses are the unbroken run's."""
    data = write_char_dataset(tmp_path / "data")
    common = ["--data_dir", str(data), *TINY_FLAGS, "--dropout", "0.1", "--max_iters", "8", "--eval_interval", "4",
              "--log_interval", "1", "--max_new_tokens", "1", "--grad_accum_steps", "2"]
    gpt.main([*common, "--out_dir", str(tmp_path / "straight")])
    interrupt(monkeypatch, name, when)
    with pytest.raises(SystemExit) as stopped:
        gpt.main([*common, "--out_dir", str(tmp_path / "split")])
    assert stopped.value.code == 130
    assert torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)["step"] == 4
    assert [r["step"] for r in read_log(tmp_path / "split") if "loss" in r] == [1, 2, 3, 4]  # the log was closed
    monkeypatch.undo()
    gpt.main([*common, "--out_dir", str(tmp_path / "split"), "--init_from", "resume"])
    straight = [(r["step"], r["loss"]) for r in read_log(tmp_path / "straight") if "loss" in r]
    assert len(straight) == 8 and [(r["step"], r["loss"]) for r in read_log(tmp_path / "split") if "loss" in r] == \
        straight
    assert straight[0][1] == pytest.approx(math.log(len(set(TEXT))), abs=0.3)  # micro-batches averaged, not summed
    val_steps = [r["step"] for r in read_log(tmp_path / "split") if "val_loss" in r]
    assert val_steps == ([4, 8] if name == "get_batch" else [8])  # an interrupted evaluation is not done again


def test_train_raises_ctrl_c_again_and_on_eval_can_stop_a_run(tmp_path, monkeypatch):
    """A caller (tune.py) sees an interrupted run as KeyboardInterrupt; on_eval gets every evaluation, and what it
    raises ends the run after that evaluation's checkpoint, with the log closed."""
    data = write_char_dataset(tmp_path / "data")
    config = gpt.Config(data_dir=str(data), n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4,
                        max_iters=20, eval_interval=5, log_interval=5, max_new_tokens=1)
    seen = []

    def on_eval(step, val_loss):
        seen.append((step, val_loss))
        if step == 10:
            raise RuntimeError("pruned")

    with pytest.raises(RuntimeError, match="pruned"):
        gpt.train(dataclasses.replace(config, out_dir=str(tmp_path / "pruned")), on_eval=on_eval)
    assert [step for step, _ in seen] == [5, 10]
    assert [(r["step"], r["val_loss"]) for r in read_log(tmp_path / "pruned") if "val_loss" in r] == \
        [(step, pytest.approx(loss)) for step, loss in seen]
    assert torch.load(tmp_path / "pruned" / "ckpt.pt", weights_only=True)["step"] == 10
    interrupt(monkeypatch, "evaluate", 1)
    with pytest.raises(KeyboardInterrupt):
        gpt.train(dataclasses.replace(config, out_dir=str(tmp_path / "interrupted")))


def test_a_new_run_never_overwrites_a_trained_one_and_resume_reads_the_same_tokens(tmp_path, capsys):
    data = write_char_dataset(tmp_path / "data")
    other = write_char_dataset(tmp_path / "other", text=TEXT.upper())  # another character vocabulary
    out = tmp_path / "out"
    gpt.main(["--data_dir", str(data), "--out_dir", str(out), *TINY_FLAGS, "--max_iters", "2", "--log_interval", "1"])
    trained = (out / "ckpt.pt").read_bytes()
    with pytest.raises(SystemExit, match="holds a run: continue it with --init_from resume"):
        gpt.main(["--data_dir", str(data), "--out_dir", str(out), *TINY_FLAGS, "--max_iters", "2"])
    assert (out / "ckpt.pt").read_bytes() == trained
    with pytest.raises(SystemExit, match=f"another tokenizer .* resume with --data_dir {data.resolve()}"):
        gpt.main(["--data_dir", str(other), "--out_dir", str(out), "--init_from", "resume", "--max_iters", "4"])
    capsys.readouterr()
    # No data named: the run continues on the data it was trained on (not the default dataset folder).
    result = gpt.main(["--out_dir", str(out), "--init_from", "resume", "--max_iters", "4", "--log_interval", "1"])
    assert result["step"] == 4 and str(data.resolve()) in capsys.readouterr().out
    assert [r["step"] for r in read_log(out) if "loss" in r] == [1, 2, 3, 4]  # one log, continued
    # The same number of characters, in another table: ids that mean other letters are refused too.
    shifted = write_char_dataset(tmp_path / "shifted", text=TEXT.replace("a", "q"))
    assert json.loads((shifted / "meta.json").read_text())["vocab_size"] == len(set(TEXT))
    with pytest.raises(SystemExit, match="another tokenizer"):
        gpt.main(["--data_dir", str(shifted), "--out_dir", str(out), "--init_from", "resume", "--max_iters", "6"])
    # Naming the default dataset is naming data: it is not replaced by the checkpoint's.
    with pytest.raises(SystemExit, match="shakespeare_char"):
        gpt.main(["--dataset", "shakespeare_char", "--out_dir", str(out), "--init_from", "resume"])


def test_a_bpe_run_samples_only_with_its_own_tokenizer_file(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 60
    data = write_bpe_dataset(tmp_path / "data", text, 300)
    out = tmp_path / "out"
    gpt.main(["--data_dir", str(data), "--out_dir", str(out), *TINY_FLAGS, "--max_iters", "2", "--max_new_tokens",
              "3"])
    assert gpt.main(["--sample", "--out_dir", str(out), "--start", "the", "--max_new_tokens", "3"])[0].startswith("the")
    write_bpe_dataset(tmp_path / "retrained", "pack my box with five dozen liquor jugs. " * 60, 300)
    (data / "bpe.model").write_bytes((tmp_path / "retrained" / "bpe.model").read_bytes())  # re-trained in place
    with pytest.raises(SystemExit, match="bpe.model is another BPE model"):
        gpt.main(["--sample", "--out_dir", str(out), "--start", "the"])
    (data / "bpe.model").unlink()
    with pytest.raises(SystemExit, match="bpe.model is missing"):
        gpt.main(["--sample", "--out_dir", str(out), "--start", "the"])
    checkpoint = torch.load(out / "ckpt.pt", weights_only=True)
    with pytest.raises(SystemExit, match="another tokenizer"):  # resuming on the re-trained folder
        gpt.main(["--data_dir", str(tmp_path / "retrained"), "--out_dir", str(out), "--init_from", "resume"])
    del checkpoint["tokenizer_sha256"]  # as an older gpt.py wrote them
    torch.save(checkpoint, out / "ckpt.pt")
    with pytest.raises(SystemExit, match="older version of this script: train again"):
        gpt.main(["--sample", "--out_dir", str(out)])


def test_a_checkpoint_of_the_sibling_script_is_named(tmp_path):
    torch.save({"format": "nanoverse-gpt-rope-v1"}, tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit, match="nanoverse-gpt-rope-v1 checkpoint, not nanoverse-gpt-v1"):
        gpt.main(["--sample", "--out_dir", str(tmp_path)])


def test_checkpoints_are_written_atomically(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "ckpt.pt.tmp").symlink_to(victim)  # a planted link at the name a fixed temporary file would have
    gpt.write_atomically(tmp_path / "ckpt.pt", lambda file: file.write(b"new"))
    assert (tmp_path / "ckpt.pt").read_bytes() == b"new" and victim.read_text() == "keep me"

    def fails(file):
        file.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        gpt.write_atomically(tmp_path / "ckpt.pt", fails)
    assert (tmp_path / "ckpt.pt").read_bytes() == b"new"  # the old file stays whole
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt.pt", "ckpt.pt.tmp", "victim.txt"]


def test_early_stopping_after_patience_evaluations(tmp_path):
    data = write_char_dataset(tmp_path / "data")
    # With a zero learning rate the val loss never improves after the first evaluation.
    result = gpt.main(["--data_dir", str(data), "--out_dir", str(tmp_path / "out"), *TINY_FLAGS, "--learning_rate", "0",
                       "--min_lr", "0", "--max_iters", "50", "--eval_interval", "2", "--patience", "2",
                       "--eval_iters", "1", "--max_new_tokens", "1"])
    assert result["step"] == 6  # evaluations at 2 (best), 4 and 6 (no better): stop
    # The evaluations on the way look at eval_iters batches; the last one, at the stop, at the whole split.
    checkpoint = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    model = gpt.GPT(gpt.Config(**checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    val_tokens = np.fromfile(data / "val.bin", dtype=np.uint16)
    whole = gpt.evaluate(model, val_tokens, model.config, torch.device("cpu"), gpt.nullcontext())
    val_losses = [r["val_loss"] for r in read_log(tmp_path / "out") if "val_loss" in r]
    assert val_losses[0] == val_losses[1] != val_losses[2] == pytest.approx(whole, abs=1e-5)
    assert result["val_loss"] == val_losses[2]


@pytest.mark.parametrize("script", ["gpt", "gpt_rope"])
def test_two_process_ddp_with_gloo(tmp_path, script):
    data = write_char_dataset(tmp_path / "data")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / f"{script}.py"), "--data_dir", str(data), "--out_dir", str(out), *TINY_FLAGS, "--max_iters", "4",
               "--eval_interval", "4", "--log_interval", "2", "--grad_accum_steps", "2", "--device", "cpu",
               "--max_new_tokens", "5"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stdout
    log = read_log(out)
    assert [r["step"] for r in log if "loss" in r] == [2, 4]  # one process logs, not two
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 4


def test_each_process_draws_its_own_batches(monkeypatch):
    tokens = np.arange(1000, dtype=np.uint16)
    batches = [gpt.get_batch(tokens, 4, 8, np.random.default_rng([1337, rank, 5]), torch.device("cpu"))[0]
               for rank in (0, 1, 0)]
    assert not torch.equal(batches[0], batches[1]) and torch.equal(batches[0], batches[2])
    assert torch.equal(batches[0][:, 1:], gpt.get_batch(tokens, 4, 8, np.random.default_rng([1337, 0, 5]),
                                                        torch.device("cpu"))[1][:, :-1])  # y is x shifted by one


def test_command_line_presets_notebooks_and_misspelled_flags(monkeypatch, capsys):
    config, typed = gpt.parse_args(["--preset", "shakespeare", "--dropout", "0", "--no-bias"])
    assert (config.n_layer, config.n_embd, config.block_size, config.dropout, config.bias) == (6, 384, 256, 0.0, False)
    assert typed == {"preset": "shakespeare", "dropout": 0.0, "bias": False}
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/root/.local/kernel-1.json"])
    monkeypatch.setitem(sys.modules, "ipykernel", sys)  # as inside a notebook: the kernel's arguments are not ours
    assert gpt.parse_args() == (gpt.Config(), {})
    with pytest.raises(SystemExit) as error:
        gpt.main(["--max_iter", "10"])  # a misspelled flag is an error, not silently ignored nor expanded
    assert error.value.code == 2 and "did you mean --max_iters?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpt.main(["--attention", "flash"])
    assert "invalid choice: 'flash'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpt.main(["--help"])
    assert "peak learning rate, reached after warmup (a tiny model tolerates a high one) (default: 0.005)" in \
        " ".join(capsys.readouterr().out.split())  # each flag's help is its Config field's comment


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(SystemExit, match="run `python prepare_data.py no_such_set` first"):
        gpt.main(["--out_dir", str(tmp_path / "o"), "--dataset", "no_such_set"])
    with pytest.raises(SystemExit, match="missing"):
        gpt.main(["--data_dir", str(tmp_path / "none"), "--out_dir", str(tmp_path / "o")])
    data = write_char_dataset(tmp_path / "data")
    with pytest.raises(SystemExit, match="--n_embd 30 must be divisible by --n_head 4"):
        gpt.main(["--data_dir", str(data), "--out_dir", str(tmp_path / "o"), "--n_embd", "30", "--n_head", "4"])
    with pytest.raises(SystemExit, match="--pos sinusoidal needs an even --n_embd"):
        gpt.main(["--data_dir", str(data), "--out_dir", str(tmp_path / "o"), "--n_embd", "27", "--n_head", "3",
                  "--pos", "sinusoidal"])
    with pytest.raises(SystemExit, match="too few for --block_size 4096"):
        gpt.main(["--data_dir", str(data), "--out_dir", str(tmp_path / "o"), "--block_size", "4096"])
    with pytest.raises(SystemExit, match="no checkpoint"):
        gpt.main(["--sample", "--out_dir", str(tmp_path / "empty")])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "ckpt.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(SystemExit, match="cannot be read"):
        gpt.main(["--sample", "--out_dir", str(tmp_path / "broken")])
    with pytest.raises(SystemExit, match="--top_p"):
        gpt.main(["--sample", "--top_p", "0"])
    for flags, named in ((["--learning_rate", "-1"], "--learning_rate cannot be negative"),
                         (["--beta2", "1.5"], "--beta2 must be at least 0 and below 1"),
                         (["--learning_rate", "nan"], "--learning_rate must be a number"),
                         (["--temperature", "inf"], "--temperature must be a number"),
                         (["--max_iters", "0"], "--max_iters must be at least 1"),
                         (["--patience", "-1"], "--patience cannot be negative"),
                         (["--device", "tpu"], "--device 'tpu': there is no such device"),
                         (["--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "no such device")):
        with pytest.raises(SystemExit, match=named):
            gpt.main(["--data_dir", str(data), "--out_dir", str(tmp_path / "o"), *flags])
    assert not (tmp_path / "o").exists()  # every mistake is named before anything is written


@pytest.mark.parametrize("script", ["gpt", "gpt_rope"])
def test_damaged_token_files_are_named_before_training(tmp_path, script):
    """Files cut short, ids past the vocabulary, a meta.json of the wrong shape or from before fingerprints: one
    sentence each, not an error from numpy or inside the embedding."""
    main = __import__(script).main
    for name, damage, named in (
            ("cut", lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-1]),
             "train.bin is missing or not a whole number of uint16 tokens"),
            ("ids", lambda d: np.append(np.fromfile(d / "val.bin", np.uint16), np.uint16(len(set(TEXT)))).tofile(
                d / "val.bin"), f"val.bin holds token id {len(set(TEXT))}, past the vocabulary's"),  # one past
            ("list", lambda d: (d / "meta.json").write_text("[1, 2]"), "not one that prepare_data.py writes"),
            ("size", lambda d: (d / "meta.json").write_text(json.dumps({"format": "nanoverse-tokens-v1",
                                                                          "dtype": "uint16"})), "KeyError"),
            ("old", lambda d: (d / "meta.json").write_text(json.dumps({
                k: v for k, v in json.loads((d / "meta.json").read_text()).items() if k != "tokenizer_sha256"})),
             "'tokenizer_sha256'")):
        data = write_char_dataset(tmp_path / name)
        damage(data)
        with pytest.raises(SystemExit, match=named):
            main(["--data_dir", str(data), "--out_dir", str(tmp_path / f"out-{name}"), *TINY_FLAGS, "--max_iters", "1"])
        assert not (tmp_path / f"out-{name}").exists()


def test_prompt_with_unknown_characters_is_named(tmp_path):
    data = write_char_dataset(tmp_path / "data")
    out = tmp_path / "out"
    gpt.main(["--data_dir", str(data), "--out_dir", str(out), *TINY_FLAGS, "--max_iters", "1", "--max_new_tokens", "1"])
    with pytest.raises(SystemExit, match="--start 'Zebra!' fails .*KeyError: 'Z'"):
        gpt.main(["--sample", "--out_dir", str(out), "--start", "Zebra!"])
    with pytest.raises(SystemExit, match="--start is empty"):
        gpt.main(["--sample", "--out_dir", str(out), "--start", ""])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_paths_run_on_a_cpu(tmp_path, dtype):
    """The CUDA recipe's precision paths, as far as a CPU runs them: bf16 autocast, and fp16 autocast with a GradScaler
    (the scaler's state goes into the checkpoint, so that a resumed run keeps its loss scale)."""
    data = write_char_dataset(tmp_path / "data")
    result = gpt.main(["--data_dir", str(data), "--out_dir", str(tmp_path / "out"), *TINY_FLAGS, "--max_iters", "4",
                       "--eval_interval", "4", "--log_interval", "2", "--dtype", dtype, "--max_new_tokens", "5"])
    assert math.isfinite(result["val_loss"]) and result["val_loss"] < math.log(len(set(TEXT))) + 0.5
    scaler = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["scaler"]
    assert (scaler.get("scale") is not None) == (dtype == "float16")  # a GradScaler only for fp16
