"""Fine-tune the real GPT-2 on verse, with its checkpoints read and written by hand.

Transfer learning in one file: start from OpenAI's pretrained GPT-2 (Radford et al. 2019, "Language Models are
Unsupervised Multitask Learners"), keep training it on a small corpus (Tiny Shakespeare by default, or your poems or
lyrics), and generate verse from a prompt. No `transformers` here: the Hugging Face checkpoint (safetensors,
https://github.com/huggingface/safetensors) is read and written in the open, mapped key by key onto gpt.py's GPT
block, and saved back as a folder that `transformers` and the Hugging Face Hub accept unchanged.

Run (a model is downloaded once into data/huggingface: distilgpt2 ~350 MB, gpt2 ~0.5 GB, gpt2-medium ~1.5 GB,
gpt2-large ~3 GB, gpt2-xl ~6 GB; with no --input and no --data_dir the text is Tiny Shakespeare, shipped with the code):
    python finetune_gpt2.py --init_from distilgpt2 --max_steps 60  # CPU: 11 min on 2 shared cores
    python finetune_gpt2.py --init_from gpt2 --input my_poems.txt --epochs 3 --save_hf out-poems/hf  # GPU, your verse
    torchrun --nproc_per_node=4 finetune_gpt2.py --init_from gpt2-medium --data_dir data/lyrics  # 4 GPUs, DDP
    python finetune_gpt2.py --mode generate --init_from out-poems/hf --prompt "Walking down the road of life"
    Colab: upload finetune_gpt2.py and prepare_data.py, then  !python finetune_gpt2.py --max_steps 200  (--input a.txt)
"""

import argparse
import dataclasses
import difflib
import hashlib
import http.client
import inspect
import itertools
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import tiktoken
import tiktoken.load
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from tqdm import tqdm

import prepare_data  # beside this script: Tiny Shakespeare and the text-file reader

@dataclasses.dataclass
class Config:
    # --- what to start from, what to read, where to write
    mode: str = "finetune"  # finetune (evaluate, train, evaluate again, save), generate (samples only) or evaluate
    init_from: str = "gpt2"  # gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, a Hugging Face folder, or resume
    input: str = ""  # a .txt file or a folder of them (read as prepare_data.py reads text); none: Tiny Shakespeare
    data_dir: str = ""  # or token files from `python prepare_data.py lyrics --tokenizer gpt2 --input DIR`
    cache_dir: str = "data/huggingface"  # downloaded GPT-2 checkpoints are kept here
    out_dir: str = "out-finetune"  # checkpoint (ckpt.pt), log.jsonl, loss.png
    save_hf: str = ""  # also write a Hugging Face folder here (a new or empty folder, or an earlier --save_hf output)
    # --- data
    block_size: int = 128  # tokens per training window (at most the model's context, 1024 for GPT-2)
    val_fraction: float = 0.1  # share of the passages held out for validation when reading text
    # --- training
    epochs: int = 1  # passes over the training windows
    max_steps: int = -1  # train exactly this many optimizer steps, however many epochs that is; -1: --epochs decides
    batch_size: int = 4  # windows per micro-batch
    grad_accum_steps: int = 1  # micro-batches averaged into one optimizer step
    learning_rate: float = 5e-5  # peak learning rate; fine-tuning wants a small one so GPT-2 keeps what it knows
    warmup_steps: int = 10  # steps of linear warmup up to learning_rate (the first at lr / warmup), then decay to 0
    weight_decay: float = 0.01  # AdamW decoupled weight decay on matrices
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 disables
    dropout: float = 0.1  # dropout while fine-tuning (GPT-2 was trained with 0.1)
    freeze_layers: int = 0  # N > 0 freezes the embeddings (so the tied output layer too) and the lowest N blocks
    eval_batches: int = 20  # validation batches per evaluation; 0 uses the whole validation split
    log_interval: int = 10  # print and log the training loss every this many steps
    sample_every: int = 0  # print a generated sample every this many steps; 0 only before and after
    seed: int = 1337  # seed for the data split and order, dropout and sampling
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps
    dtype: str = "auto"  # auto: bfloat16 autocast on CUDA (float16 where bf16 is missing), float32 on CPU and MPS
    compile: bool = None  # torch.compile the model; by default on for CUDA, off elsewhere
    # --- generation
    prompt: str = "ROMEO:"  # prompt text, or FILE:path to read it from a file
    max_new_tokens: int = 60  # tokens to generate per sample
    num_return_sequences: int = 2  # samples per prompt (greedy decoding, --temperature 0, gives one)
    temperature: float = 0.8  # <1 sharper, >1 more random; 0 is greedy decoding
    top_k: int = 0  # keep only the k most likely tokens; 0 keeps all
    top_p: float = 0.95  # nucleus sampling: the smallest set of tokens whose probability reaches top_p
    repetition_penalty: float = 1.0  # >1 makes tokens already in the text less likely (CTRL, Keskar et al. 2019)
    no_repeat_ngram_size: int = 0  # forbid repeating any n-gram of this many tokens; 0 allows everything
    # --- evaluation
    bleu_samples: int = 20  # held-out passages scored with BLEU and distinct-n; 0 skips BLEU
    bleu_prompt_lines: int = 2  # the first lines of a passage are the prompt ...
    bleu_reference_lines: int = 2  # ... and the next lines are the reference continuation

@dataclasses.dataclass
class GPTConfig:
    # The shape of the network; it comes from the checkpoint (config.json), never from the command line.
    vocab_size: int = 50257  # GPT-2's byte-level BPE vocabulary: 50,000 merges + 256 bytes + <|endoftext|>
    block_size: int = 1024  # the longest context (rows of the position table); n_positions in config.json
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # dropout probability
    bias: bool = True  # biases in Linear and LayerNorm, as in GPT-2
    attention: str = "sdpa"  # sdpa (fused kernel) or manual (the math written out)
    activation: str = "gelu"  # gelu (tanh approximation, as GPT-2) or relu
    mlp_ratio: int = 4  # MLP width over n_embd (n_inner / n_embd in config.json; null there means 4)
    layer_norm_epsilon: float = 1e-5  # LayerNorm's epsilon

class CheckpointError(ValueError):
    """A weights file or folder that cannot be used; the message is one sentence that says what to do."""

# %% The model: GPT-2, smallest piece first
# Parameter names follow GPT-2's own checkpoint (wte, wpe, h.N.ln_1, attn.c_attn, ...), so loading real GPT-2 weights
# is a key-by-key copy. The three classes below are gpt.py's, character for character.
class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t may only look at positions <= t (Vaswani et al. 2017, sec. 3.2)."""

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.attention = config.attention  # "sdpa": PyTorch's fused kernel; "manual": the same math written out
        # One matrix makes the queries, keys and values of all heads at once: (C) -> (3C).
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        # Mixes the heads' outputs back into the residual stream.
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, past_kv=None):
        B, T, C = x.size()  # batch, time (sequence length), channels (n_embd)
        head_size = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, head_size).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, head_size).transpose(1, 2)  # (B, nh, T, hs)
        if past_kv is not None:  # KV cache: the keys and values of earlier positions were computed already
            k = torch.cat([past_kv[0], k], dim=2)  # (B, nh, T_past + T, hs)
            v = torch.cat([past_kv[1], v], dim=2)
        present_kv = (k, v)
        T_total = k.size(2)
        # The causal mask: query i (absolute position T_total - T + i) sees keys 0 .. T_total - T + i.
        # Without a cache (T == T_total) this is the usual lower triangle; one new token with a cache sees everything.
        if self.attention == "manual":
            att = (q @ k.transpose(-2, -1)) / math.sqrt(head_size)  # (B, nh, T, T_total), scaled by 1/sqrt(d_k)
            mask = torch.ones(T, T_total, dtype=torch.bool, device=x.device).tril(diagonal=T_total - T)
            att = att.masked_fill(~mask, float("-inf"))  # the future gets probability exactly 0 after softmax
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, T_total) x (B, nh, T_total, hs) -> (B, nh, T, hs)
        else:
            dropout_p = self.dropout if self.training else 0.0
            if T == T_total or T == 1:  # the two cases that need no explicit mask tensor
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=T > 1)
            else:
                mask = torch.ones(T, T_total, dtype=torch.bool, device=x.device).tril(diagonal=T_total - T)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # put the heads side by side again: (B, T, C)
        y = self.resid_dropout(self.c_proj(y))
        return y, present_kv

class MLP(nn.Module):
    """The position-wise feed-forward network: widen mlp_ratio times (4 in GPT-2), non-linearity, project back."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd, bias=config.bias)
        # GPT-2 uses GELU with the tanh approximation (Hendrycks & Gimpel 2016); exact GELU drifts from its weights.
        self.act = nn.GELU(approximate="tanh") if config.activation == "gelu" else nn.ReLU()
        self.c_proj = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))

class Block(nn.Module):
    """One transformer block, pre-LayerNorm as in GPT-2: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, past_kv=None):
        # The residual stream: each sub-layer adds to x instead of replacing it, so gradients flow straight through.
        attn_out, present_kv = self.attn(self.ln_1(x), past_kv)
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, present_kv

class GPT(nn.Module):
    """GPT-2: token and position embeddings, n_layer blocks, a final LayerNorm, and the tied output layer."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token id -> vector
            wpe=nn.Embedding(config.block_size, config.n_embd),  # position -> vector (GPT-2 learns its positions)
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): the output layer is the token embedding matrix itself. GPT-2's checkpoints
        # store it once (as wte), which is why the loader below never looks for an lm_head weight.
        self.transformer.wte.weight = self.lm_head.weight
        # No initialisation of our own: every model here gets all its weights from a checkpoint right after it is
        # built (gpt.py shows GPT-2's initialisation, for training from scratch).

    def forward(self, idx, targets=None, past_kv=None):
        """idx (B, T) token ids -> logits (B, T, vocab), the mean cross-entropy against targets, and the KV cache."""
        B, T = idx.size()
        past_length = 0 if past_kv is None else past_kv[0][0].size(2)  # tokens already in the cache
        if past_length + T > self.config.block_size:
            raise ValueError(f"sequence of {past_length + T} tokens is longer than block_size {self.config.block_size}")
        positions = torch.arange(past_length, past_length + T, device=idx.device)  # absolute positions, (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))  # (B, T, C)
        present_kv = []
        for i, block in enumerate(self.transformer.h):
            x, layer_kv = block(x, None if past_kv is None else past_kv[i])
            present_kv.append(layer_kv)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:  # position t predicts token t + 1; targets are idx shifted left by one
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss, present_kv

# %% Reading and writing GPT-2's weights: the safetensors format and the Hugging Face names
# A .safetensors file is: 8 bytes (little-endian unsigned length N), N bytes of JSON
# {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}, then the raw tensor
# bytes; offsets count from the end of the header. Nothing is executed on load (unlike a pickle), so the only danger
# is a header that lies, and every claim in it is checked before a single tensor byte is read.
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}

def read_safetensors(path):
    """{name: tensor} from a .safetensors file; a file that breaks the format gets one CheckpointError sentence."""
    def refuse(problem):
        return CheckpointError(f"{path} is not a valid safetensors file: {problem}")
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        header_length = int.from_bytes(f.read(8), "little")
        if size < 8 or header_length > min(100_000_000, size - 8):  # the safetensors library's cap too
            raise refuse(f"its header claims {header_length:,} bytes, but after the 8-byte length it holds "
                         f"{max(0, size - 8):,} (truncated or corrupt); download it again")
        try:  # RecursionError: thousands of nested brackets, which would otherwise crash the JSON parser
            header = json.loads(f.read(header_length).decode("utf-8"))
        except (ValueError, RecursionError) as error:
            raise refuse(f"its header is not JSON ({type(error).__name__}); download it again") from None
        if not isinstance(header, dict):
            raise refuse("its header is not a JSON object")
        header.pop("__metadata__", None)
        data_size, spans = size - 8 - header_length, []
        for name, info in header.items():
            shape, offsets, dtype = (info.get(key) if isinstance(info, dict) else None
                                     for key in ("shape", "data_offsets", "dtype"))
            integers = isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape + offsets)
            if dtype not in SAFETENSORS_DTYPES or not integers:
                raise refuse(f"tensor {name!r} needs dtype F32/F16/BF16, shape and offsets as non-negative integers")
            begin, end = offsets
            if not begin <= end <= data_size:
                raise refuse(f"tensor {name!r} has data_offsets {offsets} outside the {data_size:,} data bytes")
            needed = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize  # Python integers: a huge shape can't wrap
            if needed != end - begin:
                raise refuse(f"tensor {name!r} of shape {shape} needs {needed:,} bytes, not {end - begin:,}")
            spans.append((begin, end, name))
        position = 0  # the tensors must tile the data exactly: no byte read as two tensors, none unaccounted for
        for begin, end, name in sorted(spans) + [(data_size, data_size, "the end of the data")]:
            if begin != position:
                problem = "overlaps the tensor before it" if begin < position else "leaves a gap after the one before"
                raise refuse(f"{name!r} {problem} (it starts at byte {begin}, the one before ends at {position})")
            position = end
        tensors = {}
        for begin, end, name in spans:  # little-endian bytes, as x86 and ARM CPUs store numbers
            f.seek(8 + header_length + begin)
            raw = torch.empty(end - begin, dtype=torch.uint8)  # torch's own (aligned) memory, filled from the file
            f.readinto(raw.numpy())
            tensors[name] = raw.view(SAFETENSORS_DTYPES[header[name]["dtype"]]).reshape(header[name]["shape"])
    return tensors

def write_safetensors(tensors, file):
    names = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, tensor in tensors.items():  # each tensor's bytes follow the one before: [offset, offset + its size)
        header[name] = {"dtype": names[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset := offset + tensor.nbytes]}
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # pad with spaces so the tensor data starts 8-byte aligned
    file.write(len(header_bytes).to_bytes(8, "little") + header_bytes)
    for tensor in tensors.values():
        file.write(tensor.reshape(-1).view(torch.uint8).numpy())

# Hugging Face GPT-2 <-> this file. Same names up to a "transformer." prefix, with three differences:
# 1. GPT-2 was written in TensorFlow with "Conv1D" layers that store a weight as (in, out); nn.Linear stores (out, in),
#    so the four matrices of each block are transposed on the way in and on the way out.
# 2. Old checkpoints also store the causal mask as buffers (attn.bias, attn.masked_bias); we build the mask ourselves.
# 3. lm_head.weight is the same matrix as wte.weight (tied), stored once.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

def load_weights(model, state, source):
    """Copy a Hugging Face GPT-2 state dict into model, transposing the Conv1D weights; name every mismatch."""
    if not (isinstance(state, dict) and all(isinstance(t, torch.Tensor) for t in state.values())):
        raise CheckpointError(f"{source} does not hold a state dict (names mapped to tensors): pass a GPT-2 folder")
    ours = {name: tensor for name, tensor in model.state_dict().items() if name != "lm_head.weight"}
    mapped = {}
    for key, tensor in state.items():
        name = key.removeprefix("transformer.")
        if not name.endswith((".attn.bias", ".attn.masked_bias")) and name != "lm_head.weight":
            conv1d = name.endswith(CONV1D_WEIGHTS) and tensor.dim() == 2
            mapped["transformer." + name] = tensor.t() if conv1d else tensor  # Conv1D (in, out) -> nn.Linear (out, in)
    missing, unexpected = sorted(ours.keys() - mapped.keys()), sorted(mapped.keys() - ours.keys())
    if missing or unexpected:
        raise CheckpointError(f"{source} does not match a {model.config.n_layer}-layer GPT-2: missing "
                              f"{missing[:6] or 'nothing'}, unexpected {unexpected[:6] or 'nothing'}")
    for name, tensor in mapped.items():
        if tensor.shape != ours[name].shape:
            raise CheckpointError(f"{source}: {name} has shape {tuple(tensor.shape)}, the config implies "
                                  f"{tuple(ours[name].shape)}; config.json and the weights disagree")
    # assign: the file's tensors become the parameters, never twice in memory; float16 and bfloat16 widen to float32.
    model.load_state_dict({name: t.float().contiguous() for name, t in mapped.items()}, strict=False, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign replaced wte's Parameter: tie the two again

ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "relu": "relu"}
GPT2_ARCHITECTURE = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False,
                     "reorder_and_upcast_attn": False, "tie_word_embeddings": True}  # the choices GPT-2 made

def config_from_hf(hf, source):
    """GPTConfig from a config.json; sizes no GPT-2 has are refused before a crafted file has terabytes allocated."""
    if not isinstance(hf, dict) or hf.get("model_type", "gpt2") != "gpt2":
        what = f"a {hf['model_type']!r} model" if isinstance(hf, dict) else f"a JSON {type(hf).__name__}"
        raise CheckpointError(f"{source} holds {what}, not the config.json of a GPT-2")
    size = {name: hf.get(name) for name in ("n_layer", "n_head", "n_embd", "vocab_size")}
    size["n_positions"] = hf.get("n_positions", hf.get("n_ctx"))
    for name, value in size.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10_000_000:
            raise CheckpointError(f"{source} gives {name} = {value!r}; it must be a whole number from 1 to 10,000,000")
    n_layer, n_head, n_embd, vocab_size, n_positions = size.values()
    n_inner, epsilon = hf.get("n_inner") or 4 * n_embd, hf.get("layer_norm_epsilon", 1e-5)  # null: 4 x n_embd
    if n_embd % n_head:
        raise CheckpointError(f"{source}: n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    if not isinstance(n_inner, int) or n_inner % n_embd or hf.get("activation_function", "gelu_new") not in \
            ACTIVATIONS or not isinstance(epsilon, (int, float)) or not epsilon > 0 or any(
            hf.get(key, value) != value for key, value in GPT2_ARCHITECTURE.items()):
        raise CheckpointError(f"{source} changes GPT-2's architecture (n_inner, activation, LayerNorm epsilon, "
                              f"attention scaling, cross-attention or untied embeddings) in a way not built here")
    if (parameters := (4 * n_embd + 2 * n_inner) * n_embd * n_layer + (vocab_size + n_positions) * n_embd) > 2e10:
        raise CheckpointError(f"{source} describes {parameters / 1e9:,.0f} billion parameters, beyond any GPT-2's 1.6")
    return GPTConfig(vocab_size, n_positions, n_layer, n_head, n_embd, mlp_ratio=n_inner // n_embd,
                     layer_norm_epsilon=epsilon, activation=ACTIVATIONS[hf.get("activation_function", "gelu_new")])

def config_to_hf(config):
    """The config.json that transformers' GPT2LMHeadModel.from_pretrained expects (its defaults left out)."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_layer": config.n_layer, "n_head": config.n_head,
            "n_embd": config.n_embd, "n_inner": None if config.mlp_ratio == 4 else config.mlp_ratio * config.n_embd,
            "activation_function": "gelu_new" if config.activation == "gelu" else "relu",
            "layer_norm_epsilon": config.layer_norm_epsilon, **GPT2_ARCHITECTURE}

def load_hf_folder(folder, dropout=0.0):
    """GPT from a Hugging Face GPT-2 folder: config.json and model.safetensors (or an older pytorch_model.bin)."""
    config_path, weights = Path(folder) / "config.json", Path(folder) / "model.safetensors"
    weights = weights if weights.is_file() else Path(folder) / "pytorch_model.bin"
    if not config_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{folder} holds no config.json and model.safetensors: pass a GPT-2 folder or a Hub name")
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as error:  # not JSON, or not UTF-8
        raise CheckpointError(f"{config_path} is not a GPT-2 config.json ({error})") from None
    with torch.device("meta"):  # shapes only: no memory, no random initialisation, as the file holds every weight
        model = GPT(dataclasses.replace(config_from_hf(hf, config_path), dropout=dropout))
    load_weights(model, read_safetensors(weights) if weights.suffix == ".safetensors" else
                 read_torch_file(weights, "prefer model.safetensors, or download the file again"), weights)
    return model

# %% Data: verse cut into passages, tokenized, packed into windows
# Documents (poems, songs, speeches) are separated by blank lines in the text, and by <|endoftext|> in the tokens, as
# in GPT-2's own training data, so the model learns where a text ends.
def split_documents(text, max_lines=32):
    """(passage, ends_document) pairs: a long document (songs with no blank line between them) is cut into passages
    of max_lines lines, the units of the train/validation split; only its last one is followed by <|endoftext|>."""
    passages = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = [line.rstrip() for line in block.split("\n") if line.strip()]
        passages += [("\n".join(lines[i:i + max_lines]), i + max_lines >= len(lines))
                     for i in range(0, len(lines), max_lines)]
    return passages

def encode_documents(passages, encoding):
    """Token ids: <|endoftext|> after a document's end, a newline where the next passage continues the document."""
    ids, newline = [], encoding.encode_ordinary("\n")
    for passage, ends_document in passages:
        ids += encoding.encode_ordinary(passage) + ([encoding.eot_token] if ends_document else newline)
    return np.array(ids, dtype=np.int64)

def split_passages(passages, val_fraction, seed):
    """A seeded (train, validation) split, each in reading order. A validation passage also in training (a chorus sung
    twice) is dropped: it is not unseen text. A document broken by the split gets <|endoftext|> at the break."""
    order = np.random.default_rng(seed).permutation(len(passages))
    val_ids = set(order[:max(1, round(len(passages) * val_fraction))].tolist())
    train_ids = [i for i in range(len(passages)) if i not in val_ids]
    train_texts = {passages[i][0] for i in train_ids}
    val_ids = [i for i in sorted(val_ids) if passages[i][0] not in train_texts]
    if not val_ids:
        raise SystemExit("error: no passage is left to validate on (the text is empty, or every passage of it repeats "
                         "one in the training split): give more varied text, with blank lines between poems")
    return [[(passages[i][0], passages[i][1] or i + 1 not in chosen) for i in ids]
            for ids, chosen in ((train_ids, set(train_ids)), (val_ids, set(val_ids)))]

def read_token_folder(folder, encoding):
    """train.bin, val.bin (np.memmap: ids stay on disk until a window needs them) and the val documents for BLEU."""
    hint = "run `python prepare_data.py lyrics --tokenizer gpt2 --input DIR` (or your dataset) first"
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("tokenizer") != "gpt2":
            raise SystemExit(f"error: --data_dir {folder} holds {meta.get('tokenizer')} tokens, not GPT-2's: {hint}")
        train, val = (np.memmap(folder / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")
                      for split in ("train", "val"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise SystemExit(f"error: --data_dir {folder} is not a complete prepare_data.py folder ({error}): "
                         f"{hint}") from None
    head = np.asarray(val[:2_000_000])  # prepare_data.py puts <|endoftext|> between documents, not after the last
    ends = np.flatnonzero(head == encoding.eot_token)
    if len(head) == len(val) and (len(ends) == 0 or ends[-1] != len(val) - 1):
        ends = np.append(ends, len(val))
    return train, val, [encoding.decode(val[start + 1:end].tolist()) for start, end in zip([-1, *ends[:199]], ends)]

def load_corpus(config, encoding):
    """(train ids, validation ids, validation documents, source) from --data_dir, --input or Tiny Shakespeare."""
    if config.data_dir:
        (train, val, val_documents), source = read_token_folder(Path(config.data_dir), encoding), config.data_dir
    else:
        # Text files as prepare_data.py reads them (UTF-8, a warning for bytes that are not), or the shipped text.
        shipped = prepare_data.SHAKESPEARE["shipped"]  # a script pasted alone downloads it instead
        documents, source, _ = prepare_data.read_documents(Path(config.input), prepare_data.Config("custom")) \
            if config.input else ([{"text": prepare_data.tiny_shakespeare()}], str(shipped) if shipped.is_file() else
                                  "Tiny Shakespeare", None)
        texts = [document["text"] for document in documents if isinstance(document["text"], str)]
        passages = [passage for text in texts for passage in split_documents(text)]
        train_passages, val_passages = split_passages(passages, config.val_fraction, config.seed)
        train, val = encode_documents(train_passages, encoding), encode_documents(val_passages, encoding)
        val_documents = [passage for passage, _ in val_passages]
        np.random.default_rng(config.seed).shuffle(val_documents)  # BLEU takes passages from the front: mix them
    for name, tokens in (("training", train), ("validation", val)):
        if len(tokens) <= config.block_size + 1:
            raise SystemExit(f"error: the {name} split has {len(tokens)} tokens, too few for --block_size "
                             f"{config.block_size}: give more text or a smaller --block_size")
    return train, val, val_documents, source

class TokenWindows(Dataset):
    """Consecutive windows of block_size + 1 tokens (neighbours share one): x, and y shifted by one, so every token is
    a target once. A DataLoader batches them (RandomSampler to train, SequentialSampler to evaluate)."""

    def __init__(self, tokens, block_size):
        self.tokens, self.block_size = tokens, block_size

    def __len__(self):
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, i):
        window = torch.from_numpy(np.asarray(self.tokens[i * self.block_size:(i + 1) * self.block_size + 1], np.int64))
        return window[:-1], window[1:]

# %% Fine-tuning: the loop that trains GPT-2 from scratch, started from its weights, with a small learning rate
def learning_rate_at(step, total_steps, config):
    """Linear warmup, then linear decay towards 0 at step total_steps (as Hugging Face's linear schedule). Steps count
    from 0: the first moves at learning_rate / warmup_steps, and the last one's rate is still above 0."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    return config.learning_rate * max(0.0, (total_steps - step) / max(1, total_steps - config.warmup_steps))

def make_optimizer(model, config, device):
    """AdamW (Loshchilov & Hutter 2019) with weight decay on matrices only, never on biases and LayerNorm gains."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
    # fused: one pass over memory updates each parameter, instead of a pass per arithmetic operation (on CPU too).
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.999), fused=device.type in ("cuda", "cpu"))

def finetune(model, train_tokens, val_tokens, config, device, autocast, scaler, checkpoint=None, log=print,
             on_sample=None, rank=0, world_size=1):
    """Train for config.epochs, or config.max_steps steps when set (it wins, as in Hugging Face's Trainer); after each
    epoch evaluate, log, save out_dir/ckpt.pt. Returns (steps, epochs) done."""
    raw_model = model  # the plain module: checkpoints, evaluation and samples use it, never the compiled/DDP wrapper
    if config.freeze_layers:  # the embeddings (so the tied output layer too) and the lowest blocks keep GPT-2's weights
        for module in [model.transformer.wte, model.transformer.wpe, *model.transformer.h[:config.freeze_layers]]:
            module.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if rank == 0:
        print(f"training {sum(p.numel() for p in trainable):,} of {sum(p.numel() for p in model.parameters()):,} "
              f"parameters")
    optimizer = make_optimizer(model, config, device)
    train_set = TokenWindows(train_tokens, config.block_size)
    windows_per_step = config.batch_size * config.grad_accum_steps * world_size
    steps_per_epoch = len(train_set) // windows_per_step
    if steps_per_epoch == 0:
        raise SystemExit(f"error: the training split has {len(train_set)} windows of {config.block_size} tokens, "
                         f"fewer than one step takes ({windows_per_step}): use a smaller --batch_size or --block_size")
    total_steps = config.max_steps if config.max_steps > 0 else config.epochs * steps_per_epoch
    step = checkpoint["step"] if checkpoint else 0
    if checkpoint:  # resuming: the optimizer's moments and the random state, as saved
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"])
        if len(checkpoint["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    # The generators dropout draws from (the CPU's, each GPU's) after the last finished step: what a Ctrl-C saves.
    rng_after_step = {"rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all()}
    model = torch.compile(model) if config.compile else model
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def save():  # what continuing needs: state dicts of the plain module, both configs, the counters, the random state
        checkpoint = {"format": CHECKPOINT_FORMAT, "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                      "model_config": dataclasses.asdict(raw_model.config), "config": dataclasses.asdict(config),
                      "step": step, "epochs": round(step / steps_per_epoch, 2)} | rng_after_step
        write_atomically(Path(config.out_dir) / "ckpt.pt", lambda file: torch.save(checkpoint, file))

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="fine-tuning", disable=rank != 0, leave=False)
    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            # The order depends only on seed and epoch (its own generator, not dropout's): a resumed run sees the same.
            order = torch.Generator().manual_seed(config.seed + epoch)
            sampler = RandomSampler(train_set, generator=order) if world_size == 1 else \
                torch.utils.data.DistributedSampler(train_set, world_size, rank, seed=config.seed + epoch)
            batches = iter(DataLoader(train_set, config.batch_size, sampler=sampler, drop_last=True, generator=order))
            for _ in range((step - epoch * steps_per_epoch) * config.grad_accum_steps):
                next(batches)  # resumed inside an epoch (after a Ctrl-C): skip the batches already trained on
            while step < min(total_steps, (epoch + 1) * steps_per_epoch):
                lr = learning_rate_at(step, total_steps, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                step_start, step_loss = time.time(), 0.0
                for micro_step in range(config.grad_accum_steps):
                    x, y = (t.to(device) for t in next(batches))
                    last = micro_step == config.grad_accum_steps - 1
                    # DDP averages gradients across processes in backward; between micro-steps that is wasted work.
                    with model.no_sync() if world_size > 1 and not last else nullcontext():
                        with autocast:
                            _, loss, _ = model(x, y)
                        scaler.scale(loss / config.grad_accum_steps).backward()
                    step_loss += loss.item() / config.grad_accum_steps
                if config.grad_clip > 0:
                    scaler.unscale_(optimizer)  # clip the true gradients, not float16's scaled-up ones
                    nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step, seconds = step + 1, time.time() - step_start
                rng_after_step = {"rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all()}
                bar.update(1)
                if rank == 0 and (step % config.log_interval == 0 or step == total_steps):
                    tokens_per_sec = windows_per_step * config.block_size / seconds
                    log({"step": step, "loss": round(step_loss, 4), "lr": lr, "ms_per_step": round(seconds * 1e3),
                         "tokens_per_sec": round(tokens_per_sec)}, f"step {step:5d} | loss {step_loss:.4f} | lr "
                        f"{lr:.2e} | {seconds * 1e3:.0f} ms/step | {tokens_per_sec:.0f} tok/s")
                if rank == 0 and on_sample and config.sample_every and step % config.sample_every == 0:
                    on_sample(step)
                    model.train()
            if rank == 0:  # the end of an epoch, or of --max_steps inside one: 1.0 epochs after the first, 1.4 ...
                val_loss, epochs = evaluate_loss(raw_model, val_tokens, config, device, autocast), \
                    step / steps_per_epoch
                log({"epoch": round(epochs, 2), "step": step, "val_loss": round(val_loss, 4)},
                    f"epoch {epochs:.2f} | val loss {val_loss:.4f} | val perplexity {math.exp(val_loss):.2f}")
                save()
    except KeyboardInterrupt:  # Ctrl-C: keep the last finished step, then stop
        if rank == 0:
            save()
            tqdm.write(f"\ninterrupted: step {step} is saved in {config.out_dir}; continue with --init_from resume")
        raise
    finally:
        bar.close()
    raw_model.eval()
    return step, round(step / steps_per_epoch, 2)

# %% Generation: logits processors, then a greedy or sampled choice, with a KV cache
def apply_repetition_penalty(logits, context, penalty):
    """CTRL (Keskar et al. 2019, sec. 4.1) divides the score of a token already in the context by penalty; as in
    Hugging Face's version, a negative score is multiplied instead, so that with penalty > 1 it always drops."""
    seen = torch.gather(logits, 1, context)
    return logits.scatter(1, context, torch.where(seen < 0, seen * penalty, seen / penalty))

def ban_repeated_ngrams(logits, context, n):
    """Forbid every token that would complete an n-gram already in the context (Paulus et al. 2017)."""
    logits = logits.clone()
    for row, tokens in enumerate(context.tolist()):
        prefix = tokens[len(tokens) - n + 1:] if n > 1 else []
        banned = [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i:i + n - 1] == prefix]
        logits[row, banned] = -math.inf
    return logits

def keep_top_k(logits, k):
    """Only the k highest scores stay candidates (Fan et al. 2018); the rest get probability 0."""
    return logits.masked_fill(logits < torch.topk(logits, min(k, logits.size(-1))).values[:, [-1]], -math.inf)

def keep_top_p(logits, p):
    """Nucleus sampling (Holtzman et al. 2019): keep the smallest set of tokens whose probability reaches p."""
    sorted_logits, sorted_ids = torch.sort(logits, descending=True)
    sorted_probs = F.softmax(sorted_logits, dim=-1)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= p  # the tokens before this one already reach p
    return logits.scatter(1, sorted_ids, sorted_logits.masked_fill(outside, -math.inf))

def choose_next_token(logits, context, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                      no_repeat_ngram_size=0, generator=None):
    """The last position's logits (B, vocab) -> the next token id per row (B, 1)."""
    if repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, context, repetition_penalty)
    if no_repeat_ngram_size > 0:
        logits = ban_repeated_ngrams(logits, context, no_repeat_ngram_size)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # greedy decoding
    logits = logits / temperature
    if top_k > 0:
        logits = keep_top_k(logits, top_k)
    if top_p < 1.0:
        logits = keep_top_p(logits, top_p)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)

@torch.inference_mode()  # no_grad, and also no version counters or view tracking: a little less work per operation
def generate(model, idx, max_new_tokens, eot_id=None, use_cache=True, generator=None, **decoding):
    """Append up to max_new_tokens tokens to idx (B, T), padding rows that produced eot_id. With the KV cache only the
    newest token goes through; past block_size the window slides by half (learned positions are absolute)."""
    model.eval()
    block_size = model.config.block_size
    window_start, past_kv = max(0, idx.size(1) - block_size), None
    finished = torch.zeros(idx.size(0), 1, dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        if idx.size(1) - window_start > block_size:
            window_start, past_kv = idx.size(1) - max(1, block_size // 2), None
        logits, _, past_kv = model(idx[:, window_start:] if past_kv is None else idx[:, -1:], past_kv=past_kv)
        past_kv = past_kv if use_cache else None
        next_token = choose_next_token(logits[:, -1, :].float(), idx, generator=generator, **decoding)  # last position
        if eot_id is not None:
            next_token = next_token.masked_fill(finished, eot_id)
            finished |= next_token == eot_id
        idx = torch.cat([idx, next_token], dim=1)
        if finished.all():
            break
    return idx

def sample_texts(model, encoding, prompt, config, device, seed):
    """num_return_sequences continuations of prompt, cut at <|endoftext|> (one for greedy decoding: all the same)."""
    prompt_ids = encoding.encode(prompt, allowed_special={prepare_data.EOT}) or [encoding.eot_token]
    idx = torch.tensor([prompt_ids] * (1 if config.temperature == 0 else config.num_return_sequences), device=device)
    out = generate(model, idx, config.max_new_tokens, encoding.eot_token, top_k=config.top_k, top_p=config.top_p,
                   temperature=config.temperature, generator=torch.Generator(device=device).manual_seed(seed),
                   repetition_penalty=config.repetition_penalty, no_repeat_ngram_size=config.no_repeat_ngram_size)
    return [prompt + encoding.decode(row).split(prepare_data.EOT)[0] for row in out[:, len(prompt_ids):].tolist()]

# %% Evaluation: perplexity, BLEU and distinct-n
@torch.no_grad()
def evaluate_loss(model, tokens, config, device, autocast):
    """Mean cross-entropy per token over the validation windows (the first eval_batches batches, in order)."""
    windows = TokenWindows(tokens, config.block_size)
    # Its own generator: a loader draws a seed, which from the global one would move training's dropout masks.
    loader = DataLoader(windows, config.batch_size, sampler=SequentialSampler(windows), generator=torch.Generator())
    was_training, total_loss, total_tokens = model.training, 0.0, 0
    model.eval()
    for x, y in itertools.islice(loader, config.eval_batches or None):  # None: every batch
        with autocast:
            _, loss, _ = model(x.to(device), y.to(device))
        total_loss, total_tokens = total_loss + loss.item() * y.numel(), total_tokens + y.numel()
    model.train(was_training)
    return total_loss / total_tokens

def tokenize_13a(line):
    """sacrebleu's default (WMT's mteval-v13a.pl): split off symbols, and periods and commas unless between digits."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = re.sub(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 ", f" {line} ")
    line = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", line)
    line = re.sub(r"([\.,])([^0-9])", r" \1 \2", line)
    return re.sub(r"([0-9])(-)", r"\1 \2 ", line).split()

def ngram_counts(words, n):
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))

def corpus_bleu(hypotheses, references, max_order=4):
    """Corpus BLEU in 0..100 (Papineni et al. 2002) as sacrebleu's default: 13a tokens, clipped n-gram precisions summed
    over the corpus, their geometric mean, 'exp' smoothing for orders with no match, and the brevity penalty."""
    correct, total, hypothesis_length, reference_length = [0] * max_order, [0] * max_order, 0, 0
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        hyp_words, ref_words = tokenize_13a(hypothesis.rstrip()), tokenize_13a(reference.rstrip())
        hypothesis_length, reference_length = hypothesis_length + len(hyp_words), reference_length + len(ref_words)
        for n in range(1, max_order + 1):
            ref_ngrams = ngram_counts(ref_words, n)
            correct[n - 1] += sum(min(count, ref_ngrams[gram]) for gram, count in ngram_counts(hyp_words, n).items())
            total[n - 1] += max(0, len(hyp_words) - n + 1)
    if not any(correct) or not all(total):  # no match, or no n-grams of some order at all: sacrebleu's 0
        return 0.0
    log_precisions, unmatched = [], 1.0
    for n in range(max_order):
        if correct[n] == 0:  # 'exp' smoothing (NIST's, Chen & Cherry 2014 method 3): 1/2, 1/4, ... of a match
            unmatched *= 2
        log_precisions.append(math.log(100.0 * (correct[n] or 1 / unmatched) / total[n]))
    # Brevity penalty: precision alone would reward saying little, so a corpus shorter than the references pays.
    return math.exp(min(0.0, 1 - reference_length / hypothesis_length)) * math.exp(sum(log_precisions) / max_order)

def distinct_n(texts, n):
    """Distinct n-grams divided by all n-grams over the texts (Li et al. 2016 divide by the tokens instead; dividing
    by the n-grams makes 1.0, never repeating itself, the top for every n)."""
    grams = [gram for text in texts for gram in ngram_counts(tokenize_13a(text), n).elements()]
    return len(set(grams)) / len(grams) if grams else None  # no n-grams at all: nothing to measure, not 0

def bleu_passages(documents, config):
    """(prompt, reference) pairs: bleu_prompt_lines lines of a held-out document, then the next lines. Every
    document's first passage comes first; later ones follow round by round (a few long documents: a file per artist)."""
    needed, k = config.bleu_prompt_lines + config.bleu_reference_lines, config.bleu_prompt_lines
    documents = [[line for line in document.split("\n") if line.strip()] for document in documents]
    passages = [lines[start:start + needed] for start in range(0, max(map(len, documents), default=0), needed)
                for lines in documents if len(lines) >= start + needed]
    return [("\n".join(passage[:k]) + "\n", "\n".join(passage[k:])) for passage in passages[:config.bleu_samples]]

def measure(model, encoding, val_tokens, pairs, config, device, autocast):
    """Validation loss and perplexity; BLEU of greedy continuations against the real next lines, and their distinct-1/2
    (None: nothing to measure). --repetition_penalty and --no_repeat_ngram_size apply: the scores show your decoding."""
    val_loss = evaluate_loss(model, val_tokens, config, device, autocast)
    scores = {"val_loss": val_loss, "val_ppl": math.exp(val_loss), "bleu": None, "distinct_1": None, "distinct_2": None}
    hypotheses = []
    for prompt, reference in pairs:  # greedy, a few tokens longer than the reference
        new_tokens = len(encoding.encode_ordinary(reference)) + 8
        greedy = dataclasses.replace(config, temperature=0.0, max_new_tokens=new_tokens)
        text = sample_texts(model, encoding, prompt, greedy, device, seed=0)[0][len(prompt):]
        hypotheses.append("\n".join(text.strip("\n").split("\n")[:config.bleu_reference_lines]))
    if pairs:
        scores["bleu"] = corpus_bleu(hypotheses, [reference for _, reference in pairs])
        scores |= {f"distinct_{n}": distinct_n(hypotheses, n) for n in (1, 2)}
    return scores

# %% Saving a folder that transformers and the Hugging Face Hub read as is
# GPT-2's tokenizer is the two files tiktoken downloaded and cached: encoder.json (token -> id) and vocab.bpe (the
# 50,000 merges in rank order); Hugging Face names the very same files vocab.json and merges.txt: copied, not rebuilt.
TOKENIZER_FILES = {"vocab.json": "encoder.json", "merges.txt": "vocab.bpe"}
TOKENIZER_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
HF_FILES = {"config.json", "model.safetensors", "tokenizer_config.json", "README.md", *TOKENIZER_FILES}

def save_hf_folder(model, folder, card=""):
    """config.json, model.safetensors, the tokenizer files and README.md (the model card), built in a temporary folder
    beside the target (new, empty or an earlier output) and renamed: a crash or Ctrl-C never leaves half a model."""
    (folder := Path(folder)).parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".part"))
    old = building.with_suffix(".old")
    try:
        building.chmod(0o755)
        with open(building / "model.safetensors", "wb") as f:  # load_weights in reverse: Conv1D layouts, no lm_head
            write_safetensors({name: (t.t() if name.endswith(CONV1D_WEIGHTS) else t).float()
                               for name, t in model.state_dict().items() if name != "lm_head.weight"}, f)
        for name, original in TOKENIZER_FILES.items():
            (building / name).write_bytes(tiktoken.load.read_file_cached(TOKENIZER_URL + original))
        tokenizer_config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": model.config.block_size,
                            "add_prefix_space": False,  # <|endoftext|> begins, ends and stands in for unknown text
                            **dict.fromkeys(("bos_token", "eos_token", "unk_token"), prepare_data.EOT)}
        for name, text in (("config.json", json.dumps(config_to_hf(model.config), indent=2)),
                           ("tokenizer_config.json", json.dumps(tokenizer_config, indent=2)), ("README.md", card)):
            (building / name).write_text(text + "\n", encoding="utf-8")
        if folder.exists():  # empty, or an earlier output: swapped out, then removed
            os.replace(folder, old)
        os.replace(building, folder)
    except BaseException:
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        shutil.rmtree(building, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    print(f"saved a Hugging Face folder in {folder}")

# %% Plumbing: files, downloads, checkpoints, the model card, the loss picture, command line (skip on a first read)
def write_atomically(path, write):
    """write(file) into a new, uniquely named temporary file beside path, then renamed to path: never half a file."""
    handle, temporary = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".part")
    try:  # mkstemp makes a new file: a symlink already at some name is never followed
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:  # any failure, Ctrl-C too: the temporary file goes
        Path(temporary).unlink(missing_ok=True)
        raise

class Redirects(urllib.request.HTTPRedirectHandler):
    sha256 = None  # redirects, never from https to http; the Hub's X-Linked-Etag (a large file's sha256) is kept
    def redirect_request(self, request, file, code, message, headers, new_url):
        if request.full_url.startswith("https:") and not new_url.startswith("https:"):
            raise urllib.error.URLError(f"refused a redirect from https to {new_url}")
        etag = (headers.get("X-Linked-Etag") or "").strip('"')
        self.sha256 = self.sha256 or (etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None)
        return super().redirect_request(request, file, code, message, headers, new_url)

def download(url, path):
    """url into path, once: a .part file takes the name when its length and its sha256 (where published) match."""
    path, redirects = Path(path), Redirects()

    def fetch(file):
        with urllib.request.build_opener(redirects).open(url, timeout=60) as response:
            size, digest = int(response.headers.get("Content-Length") or -1), hashlib.sha256()
            with tqdm(total=max(size, 0) or None, unit="B", unit_scale=True, desc=path.name) as bar:
                while chunk := response.read(1 << 20):
                    file.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if size >= 0 and file.tell() != size:
            raise CheckpointError(f"the download of {path.name} stopped after {file.tell():,} of {size:,} bytes: retry")
        if redirects.sha256 not in (None, digest.hexdigest()):
            raise CheckpointError(f"{path.name} arrived corrupt (its sha256 is not the published one): run again")

    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_atomically(path, fetch)
        except (OSError, http.client.HTTPException) as error:  # urllib's URLError is an OSError
            raise CheckpointError(f"could not download {url} ({getattr(error, 'reason', error)}): check the network, "
                                  f"or pass a local Hugging Face folder with --init_from DIR") from None
    return path

# The five checkpoints OpenAI and Hugging Face published, under their current Hub names: gpt2 (124M parameters),
# gpt2-medium (355M), gpt2-large (774M), gpt2-xl (1.5B), distilgpt2 (82M: 6 layers distilled from gpt2, Sanh et al.).
HUB_MODELS = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")} | \
    {"distilgpt2": "distilbert/distilgpt2"}
CHECKPOINT_FORMAT = "nanoverse-finetune-gpt2-v2"  # ckpt.pt of another version or script is refused

def read_torch_file(path, what_to_do):
    try:  # weights_only: a pickle that would build anything but tensors and plain data is refused, never run
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's own message suggests weights_only=False, which would run the file: not here
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint ({type(error).__name__}): it is "
                              f"truncated, damaged or no checkpoint at all; {what_to_do}") from None

def comparison_table(before, after, columns, config, pairs):
    """The before/after table in markdown; a cell with nothing to measure points to a footnote that says why."""
    needed, rows, footnotes = config.bleu_prompt_lines + config.bleu_reference_lines, [["metric", *columns]], []
    for key, name, digits in (("val_loss", "validation loss", 4), ("val_ppl", "validation perplexity", 2),
                              ("bleu", f"BLEU ({len(pairs)} passages)" if pairs else "BLEU", 2),
                              ("distinct_1", "distinct-1", 3), ("distinct_2", "distinct-2", 3)):
        why = "--bleu_samples 0 skips it" if not config.bleu_samples else f"no validation document has {needed} " \
            f"non-empty lines" if not pairs else f"the greedy continuations hold no {key[-1]}-word sequence to count"
        footnotes += [why] if None in (before[key], after[key]) and why not in footnotes else []
        rows.append([name, *(f"{s[key]:.{digits}f}" if s[key] is not None else f"n/a [{footnotes.index(why) + 1}]"
                             for s in (before, after))])
    return "\n".join(f"| {' | '.join(row)} |" for row in rows[:1] + [["---"] * 3] + rows[1:]) + \
        "".join(f"\n[{i}] {why}" for i, why in enumerate(footnotes, 1))

def model_card(model, config, steps, epochs=0, table=""):
    hub_id, base = HUB_MODELS.get(config.init_from), Path(config.init_from).name  # a local path may be private
    data = f"`{Path(config.input or config.data_dir).name}`" if config.input or config.data_dir else "Tiny Shakespeare"
    size = f"{model.config.n_layer}-layer GPT-2 ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)"
    training = f"## Training\n\n{steps} optimizer steps ({epochs:g} epochs) on {data}.\n\n{table}\n" if steps else \
        f"Converted from `{base}` without any training.\n"
    return (f"---\nlicense: mit\nlibrary_name: transformers\npipeline_tag: text-generation\n"
            f"{f'base_model: {hub_id}{chr(10)}' if hub_id else ''}---\n\n"
            f"# GPT-2 {f'fine-tuned from `{base}`' if steps else 'in the Hugging Face format'}\n\nA {size} written by "
            f"nanoverse's `finetune_gpt2.py`; `transformers.pipeline(\"text-generation\", model=...)` loads it.\n\n"
            f"{training}\nGPT-2's weights come under OpenAI's modified MIT license. Song lyrics and most modern poems "
            f"are copyrighted: publish a model trained on them only where their license allows it.\n")

def plot_losses(log_path, png_path):
    """Training and validation loss (step 0: before fine-tuning) from log.jsonl: a resumed run shows the whole run."""
    from matplotlib.figure import Figure  # no pyplot: no window, and a notebook's own plotting stays as it was
    lines = log_path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.endswith("}")]  # not a line that a crash cut short
    ax = (fig := Figure(figsize=(7, 4))).subplots()
    ax.plot(*zip(*[(r["step"], r["loss"]) for r in records if "loss" in r]), label="training loss", alpha=0.7)
    ax.plot(*zip(*sorted({r["step"]: r["val_loss"] for r in records if "val_loss" in r}.items())), "o-",
            label="validation loss (at step 0: before fine-tuning)")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)")
    ax.legend()
    fig.tight_layout()
    write_atomically(png_path, lambda file: fig.savefig(file, dpi=120, format="png"))

def check_config(config, saved=None):
    """Every mistake that can be named before any text or model is read (saved: the settings of a resumed run)."""
    problems = [f"--{name} must be at least 1, not {getattr(config, name)}" for name in (
        "block_size", "epochs", "batch_size", "grad_accum_steps", "log_interval", "num_return_sequences",
        "max_new_tokens", "bleu_prompt_lines", "bleu_reference_lines") if getattr(config, name) < 1]
    problems += [f"--{name} must be 0 or more, not {getattr(config, name)}" for name in (
        "warmup_steps", "weight_decay", "grad_clip", "freeze_layers", "eval_batches", "sample_every", "top_k",
        "no_repeat_ngram_size", "bleu_samples", "temperature") if getattr(config, name) < 0]
    ranges = {"dropout": (0 <= config.dropout < 1, "in [0, 1)"), "top_p": (0 < config.top_p <= 1, "in (0, 1]"),
              "val_fraction": (0 < config.val_fraction < 1, "in (0, 1)"),
              "seed": (0 <= config.seed < 2**32, f"from 0 to {2**32 - 1}"),
              "learning_rate": (config.learning_rate > 0, "more than 0"),
              "repetition_penalty": (config.repetition_penalty > 0, "more than 0 (1 changes nothing)"),
              "max_steps": (config.max_steps == -1 or config.max_steps > 0, "-1 (train for --epochs) or a step count")}
    problems += [f"--{key} must be {rule}, not {getattr(config, key)}" for key, (ok, rule) in ranges.items() if not ok]
    hf_files = {p.name for p in Path(config.save_hf).iterdir()} if Path(config.save_hf or "-").is_dir() else set()
    devices = ["auto", "cpu"] + ["mps"] * torch.backends.mps.is_available() + ["cuda"] * torch.cuda.is_available() + \
        [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    problems += [message for wrong, message in (
        (config.mode == "evaluate" and config.save_hf, "--save_hf is written by --mode finetune or generate only"),
        (config.device not in devices,
         f"--device {config.device} is not a device of this machine: use {', '.join(devices)}"),
        (int(os.environ.get("WORLD_SIZE", 1)) > 1 and config.mode != "finetune",
         f"--mode {config.mode} runs in one process: start it with python, not torchrun"),
        (config.input and config.data_dir, "pass --input (text files) or --data_dir (token files), not both"),
        (config.input and not Path(config.input).exists(), f"--input {config.input}: there is no such file or folder"),
        (config.prompt.startswith("FILE:") and not Path(config.prompt[5:]).is_file(),
         f"--prompt {config.prompt}: there is no file {config.prompt[5:]}"),
        (saved and config.freeze_layers != saved["freeze_layers"],  # the optimizer's moments fit only those weights
         f"the run was trained with --freeze_layers {(saved or {}).get('freeze_layers')}: resume with that"),
        (config.mode == "finetune" and not saved and Path(config.out_dir, "ckpt.pt").exists(),
         f"{config.out_dir} already holds a run (ckpt.pt): use --init_from resume, or pick another --out_dir"),
        (hf_files not in (set(), HF_FILES),
         f"--save_hf {config.save_hf} holds other files: choose a new or empty folder")) if wrong]
    for flag, folder in (("--out_dir", config.out_dir), ("--save_hf", config.save_hf)):
        existing = next((p for p in [Path(folder), *Path(folder).parents] if p.exists()), None) if folder else None
        problems += [f"{flag} {folder}: {existing} is a file, not a folder"] if existing and existing.is_file() else []
    if problems:
        raise SystemExit(f"error: {problems[0]}")

def parse_config(argv):
    """Config from flags spelled as its fields (help: each field's comment), and the dict of the flags typed."""
    try:  # a notebook has no source file to read the comments from: the flags work without help text there
        comments = dict(re.findall(r"^\s+(\w+): [^#\n]*#\s*(.+)$", inspect.getsource(Config), re.M))
    except (OSError, TypeError):
        comments = {}
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], allow_abbrev=False)
    choices = {"mode": ("finetune", "generate", "evaluate"), "dtype": ("auto", "float32", "bfloat16", "float16")}
    for field in dataclasses.fields(Config):  # no defaults in the parser: a resumed run must know what was typed
        kind = {"action": argparse.BooleanOptionalAction} if field.type is bool else {"type": field.type}
        default = "auto" if field.default is None else field.default
        parser.add_argument(f"--{field.name}", **kind, choices=choices.get(field.name), default=argparse.SUPPRESS,
                            help=f"{comments.get(field.name, '')} (default: {default})")
    typed, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [f"--{field.name}" for field in dataclasses.fields(Config)] + ["--no-compile", "--help"]
        close = difflib.get_close_matches(unknown[0].split("=")[0], flags, n=1)
        parser.error(f"unrecognized arguments: {' '.join(unknown)}" + (f": did you mean {close[0]}?" if close else ""))
    return Config(**vars(typed)), vars(typed)

def main(argv=None):
    if argv is None:  # in a notebook, sys.argv holds the kernel's own flags: run with the defaults
        argv = [] if "ipykernel" in sys.modules else sys.argv[1:]
    config, typed = parse_config(argv)
    try:
        run(config, typed)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    except KeyboardInterrupt:
        raise SystemExit("interrupted") from None

def run(config, typed):
    world_size, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))  # set by torchrun
    out_dir, checkpoint = Path(config.out_dir), None
    if config.init_from == "resume":  # a resumed run is the same run: the checkpoint's settings, except those typed
        checkpoint = read_torch_file(out_dir / "ckpt.pt", "start a fresh run with another --out_dir") \
            if (out_dir / "ckpt.pt").is_file() else {}
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"--init_from resume needs a checkpoint of this version of finetune_gpt2.py in "
                                  f"{out_dir / 'ckpt.pt'}: start a fresh run with another --out_dir")
        saved = checkpoint["config"] | ({"input": "", "data_dir": ""} if {"input", "data_dir"} & typed.keys() else {})
        config = Config(**saved | typed | {"init_from": saved["init_from"], "out_dir": config.out_dir})
    check_config(config, checkpoint and checkpoint["config"])
    if world_size > 1:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            config.device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(config.device)
    if config.device == "auto":
        config.device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device, dtype = torch.device(config.device), config.dtype
    if dtype == "auto":  # bfloat16 keeps float32's range; float16 needs its gradients scaled up so they don't vanish
        dtype = "float32" if device.type != "cuda" else "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    autocast = nullcontext() if dtype == "float32" else torch.autocast(device.type, dtype=getattr(torch, dtype))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")
    config.compile = device.type == "cuda" if config.compile is None else config.compile
    torch.manual_seed(config.seed + rank)
    try:  # tiktoken downloads GPT-2's two tokenizer files once and caches them
        encoding = tiktoken.get_encoding("gpt2")
    except Exception as error:
        raise SystemExit(f"error: could not load GPT-2's tokenizer ({type(error).__name__}): tiktoken downloads it "
                         f"once, so connect to the internet for the first run") from None
    if config.mode != "generate":  # the text first: a mistake there is named before a model is downloaded
        train_tokens, val_tokens, val_documents, source = load_corpus(config, encoding)
    if checkpoint:
        model = GPT(GPTConfig(**checkpoint["model_config"] | {"dropout": config.dropout}))
        model.load_state_dict(checkpoint["model"])
    else:  # a Hub name is downloaded once into --cache_dir, from the Hub or the mirror HF_ENDPOINT names
        folder = Path(config.cache_dir, config.init_from) if config.init_from in HUB_MODELS else config.init_from
        for name in ("config.json", "model.safetensors") if config.init_from in HUB_MODELS else ():
            download(f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}/{HUB_MODELS[config.init_from]}"
                     f"/resolve/main/{name}", folder / name)
        model = load_hf_folder(folder, config.dropout)
    if config.mode != "generate" and config.block_size > model.config.block_size:  # generation slides its own window
        raise SystemExit(f"error: --block_size {config.block_size} is longer than the model's context "
                         f"({model.config.block_size}): use a smaller one")
    if config.freeze_layers > model.config.n_layer:
        raise SystemExit(f"error: --freeze_layers {config.freeze_layers} is more than the model's "
                         f"{model.config.n_layer} blocks: use a number from 0 to {model.config.n_layer}")
    model.to(device)
    prompt = Path(config.prompt[5:]).read_text(encoding="utf-8", errors="replace") \
        if config.prompt.startswith("FILE:") else config.prompt
    start = checkpoint["step"] if checkpoint else 0
    if rank == 0:
        print(f"model: {f'{out_dir} at step {start}' if checkpoint else config.init_from} "
              f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) on {device}")
    if config.mode == "generate":
        for text in sample_texts(model, encoding, prompt, config, device, config.seed):
            print(f"{text}\n{'-' * 80}")
        if config.save_hf:
            save_hf_folder(model, config.save_hf, model_card(model, config, start, checkpoint and checkpoint["epochs"]))
        return

    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0 and config.mode == "finetune" and not checkpoint:
        (out_dir / "log.jsonl").unlink(missing_ok=True)  # a fresh run starts its log anew; a resumed run appends

    def log(record, line):  # only the first process logs; the file first: a Ctrl-C then loses a line, never a record
        with open(out_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        tqdm.write(line)

    def evaluation(label, step):
        scores = measure(model, encoding, val_tokens, pairs, config, device, autocast)
        log({"eval": label, "step": step} | scores,
            f"{label}: " + ", ".join(f"{key} {value:.4g}" for key, value in scores.items() if value is not None))
        return scores, sample_texts(model, encoding, prompt, config, device, config.seed)

    def show_sample(step):  # tqdm.write keeps the text off the progress bar's line
        tqdm.write(f"--- sample at step {step}:\n{sample_texts(model, encoding, prompt, config, device, step)[0]}")

    pairs = bleu_passages(val_documents, config)
    # After a resume the starting point is the checkpoint, not the base model (which is not loaded again): say so.
    before_label = f"at resume (step {start})" if checkpoint else "base model"
    if rank == 0:
        print(f"data: {source} ({len(train_tokens):,} training and {len(val_tokens):,} validation tokens)")
        before, before_samples = evaluation(before_label, start)
    if config.mode == "evaluate":
        print("".join(f"\n{text}\n{'-' * 80}" for text in before_samples))
        return
    step, epochs = finetune(model, train_tokens, val_tokens, config, device, autocast, scaler, checkpoint, log,
                            show_sample, rank, world_size)
    if rank == 0:
        after, after_samples = evaluation("fine-tuned", step)
        print(f"\n{(table := comparison_table(before, after, (before_label, 'fine-tuned'), config, pairs))}")
        for i, (old, new) in enumerate(zip(before_samples, after_samples)):
            print(f"\n=== sample {i + 1}, {before_label} ===\n{old}\n=== sample {i + 1}, fine-tuned ===\n{new}")
        plot_losses(out_dir / "log.jsonl", out_dir / "loss.png")
        if config.save_hf:
            save_hf_folder(model, config.save_hf, model_card(model, config, step, epochs, table))
    if world_size > 1:
        torch.distributed.destroy_process_group()

# %% Run
if __name__ == "__main__":
    main()
