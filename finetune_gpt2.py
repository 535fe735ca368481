"""Fine-tune the real GPT-2 on your poems or lyrics, with its checkpoints read and written by hand.

Transfer learning in one file: start from OpenAI's pretrained GPT-2 (Radford et al. 2019, "Language Models are
Unsupervised Multitask Learners"), keep training it on a small corpus of verse, and generate new verses from a prompt.
There is no `transformers` here: the Hugging Face checkpoint format is read and written in the open (safetensors: an
8-byte header length, a JSON header, raw little-endian tensors; https://github.com/huggingface/safetensors), the weight
names are mapped key by key onto the same GPT block that gpt.py uses, and the result is saved back as a folder that
`transformers` and the Hugging Face Hub accept unchanged.

Run:
    python finetune_gpt2.py --init_from distilgpt2 --input my_poems.txt --max_steps 60  # CPU: ~5 min on 2 cores
    python finetune_gpt2.py --init_from gpt2-medium --data_dir data/lyrics --epochs 3 --out_dir out-lyrics \
        --save_hf out-lyrics/hf  # GPU
    torchrun --nproc_per_node=4 finetune_gpt2.py --init_from gpt2-medium --data_dir data/lyrics  # 4 GPUs, DDP
    python finetune_gpt2.py --mode generate --init_from out-lyrics/hf --prompt "Walking down the road of life"
    Colab: upload finetune_gpt2.py and a .txt of poems, then  !python finetune_gpt2.py --input poems.txt --epochs 1
"""

import argparse
import ctypes
import dataclasses
import hashlib
import inspect
import json
import math
import os
import re
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken
import tiktoken.load
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from tqdm import tqdm


@dataclass
class Config:
    # --- what to start from and what to read
    mode: str = "finetune"  # finetune (evaluate, train, evaluate, save), generate (samples only) or evaluate
    init_from: str = "gpt2"  # gpt2, gpt2-medium/-large/-xl, distilgpt2, a Hugging Face folder, a gpt.py ckpt.pt, resume
    input: str = ""  # a .txt file or a folder of .txt files to fine-tune on (raw text, tokenized here)
    data_dir: str = "data/lyrics"  # or token files from `python prepare_data.py lyrics --tokenizer gpt2 --input DIR`
    cache_dir: str = "data/huggingface"  # downloaded GPT-2 checkpoints are kept here
    out_dir: str = "out-finetune"  # checkpoint (ckpt.pt), log.jsonl, loss.png
    save_hf: str = ""  # also write a Hugging Face folder here (config.json, model.safetensors, tokenizer, model card)
    # --- data
    block_size: int = 128  # tokens per training window (at most the model's context, 1024 for GPT-2)
    val_fraction: float = 0.1  # share of the documents held out for validation when reading --input
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
    seed: int = 1337  # seed for the data order, dropout and sampling
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default (one per core)
    dtype: str = "auto"  # float32, bfloat16 or float16 autocast; auto: bfloat16 on CUDA (else float16), float32 on CPU
    compile: bool = None  # torch.compile the model; by default on for CUDA, off on CPU
    # --- generation
    prompt: str = "Walking down the road of life"  # prompt text, or FILE:path to read it from a file
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


@dataclass
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


# The five checkpoints OpenAI and Hugging Face published, under their current Hub names.
HUB_MODELS = {
    "gpt2": "openai-community/gpt2",  # 124M parameters
    "gpt2-medium": "openai-community/gpt2-medium",  # 355M
    "gpt2-large": "openai-community/gpt2-large",  # 774M
    "gpt2-xl": "openai-community/gpt2-xl",  # 1.5B
    "distilgpt2": "distilbert/distilgpt2",  # 82M, 6 layers distilled from gpt2 (Sanh et al. 2019)
}
CHECKPOINT_FORMAT = "nanoverse-finetune-gpt2-v1"
EOT = "<|endoftext|>"


class CheckpointError(ValueError):
    """A weights file or folder that cannot be used; the message is one sentence that says what to do."""

# ----------------------------------------------------------------------------------------------------------------------
# The model, smallest piece first. Parameter names follow GPT-2's own checkpoint (wte, wpe, h.N.ln_1, attn.c_attn,
# attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f), so loading real GPT-2 weights is a key-by-key copy.


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
        x, present_kv = self.hidden_states(idx, past_kv)
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = None
        if targets is not None:  # position t predicts token t + 1; targets are idx shifted left by one
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss, present_kv

    def hidden_states(self, idx, past_kv=None):
        """idx (B, T) -> the final LayerNorm's output (B, T, n_embd), which the output layer turns into logits."""
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
        return self.transformer.ln_f(x), present_kv


# ----------------------------------------------------------------------------------------------------------------------
# safetensors, read and written by hand. A file is: 8 bytes (little-endian unsigned length N), N bytes of JSON
# {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}, then the raw tensor
# bytes; offsets count from the end of the header. Nothing is executed on load (unlike pickle), so the only dangers
# are lies in the header, and every one of them is checked before a single tensor byte is read.

SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library refuses longer headers too: a header is names and shapes


def read_safetensors(path):
    """Return {name: tensor} from a .safetensors file, or raise CheckpointError naming what is wrong."""
    path = Path(path)
    file_size = path.stat().st_size
    bad = f"{path} is not a valid safetensors file"
    if file_size < 8:
        raise CheckpointError(f"{bad}: it is {file_size} bytes long, shorter than the 8-byte header length")
    with open(path, "rb") as f:
        (header_length,) = struct.unpack("<Q", f.read(8))
        if header_length > min(MAX_HEADER_BYTES, file_size - 8):
            raise CheckpointError(f"{bad}: its header claims {header_length:,} bytes but the file holds "
                                  f"{file_size - 8:,} after the length (truncated or corrupt); download it again")
        try:
            header = json.loads(f.read(header_length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{bad}: its header is not JSON ({error}); download it again") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{bad}: its header is not a JSON object")
        header.pop("__metadata__", None)
        data_start, data_size = 8 + header_length, file_size - 8 - header_length
        spans = []
        for name, info in header.items():
            if not (isinstance(info, dict) and isinstance(info.get("shape"), list)
                    and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                            for v in info["shape"] + info["data_offsets"])):
                raise CheckpointError(f"{bad}: tensor {name!r} needs a dtype, a shape of non-negative integers and "
                                      f"two data_offsets")
            if info.get("dtype") not in SAFETENSORS_DTYPES:
                raise CheckpointError(f"{bad}: tensor {name!r} has dtype {info.get('dtype')!r}; only "
                                      f"{', '.join(SAFETENSORS_DTYPES)} are read here")
            begin, end = info["data_offsets"]
            if not begin <= end <= data_size:
                raise CheckpointError(f"{bad}: tensor {name!r} has data_offsets [{begin}, {end}] outside the "
                                      f"{data_size:,} data bytes (truncated or crafted file)")
            item_size = torch.empty(0, dtype=SAFETENSORS_DTYPES[info["dtype"]]).element_size()
            if math.prod(info["shape"]) * item_size != end - begin:
                raise CheckpointError(f"{bad}: tensor {name!r} of shape {info['shape']} needs "
                                      f"{math.prod(info['shape']) * item_size:,} bytes but has {end - begin:,}")
            spans.append((begin, end, name))
        # The format requires the tensors to tile the data exactly: no overlaps (one byte read as two tensors) and no
        # holes (bytes nobody accounts for).
        position = 0
        for begin, end, name in sorted(spans):
            if begin != position:
                problem = "overlaps the tensor before it" if begin < position else "leaves a gap before it"
                raise CheckpointError(f"{bad}: tensor {name!r} {problem} (data_offsets start at {begin}, "
                                      f"expected {position})")
            position = end
        if position != data_size:
            raise CheckpointError(f"{bad}: the tensors cover {position:,} of its {data_size:,} data bytes")
        if sys.byteorder != "little":
            raise CheckpointError("safetensors stores little-endian numbers; this reader runs on little-endian CPUs")
        tensors = {}
        for begin, end, name in spans:
            info = header[name]
            f.seek(data_start + begin)
            raw = bytearray(f.read(end - begin))
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            tensor = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            tensors[name] = tensor.reshape(info["shape"])
    return tensors


def write_safetensors(tensors, path, metadata=None):
    """Write {name: tensor} as a .safetensors file (atomically: a temporary file, then a rename)."""
    names = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
    header, offset, payload = {"__metadata__": metadata or {"format": "pt"}}, 0, []
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.dtype not in names:
            raise ValueError(f"cannot save {name} of dtype {tensor.dtype} as safetensors here")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": names[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        payload.append(tensor)
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # pad with spaces so the tensor data starts 8-byte aligned
    temporary = Path(f"{path}.tmp")
    with open(temporary, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for tensor in payload:
            f.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    os.replace(temporary, path)


# ----------------------------------------------------------------------------------------------------------------------
# Hugging Face GPT-2 <-> this file. Same names up to a "transformer." prefix, with three differences:
# 1. GPT-2 was written in TensorFlow with "Conv1D" layers that store a weight as (in, out); nn.Linear stores (out, in),
#    so the four matrices of each block are transposed on the way in and on the way out.
# 2. Old checkpoints also store the causal mask as buffers (attn.bias, attn.masked_bias); we build the mask ourselves.
# 3. lm_head.weight is the same matrix as wte.weight (tied), stored once.

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
CAUSAL_MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")


def load_weights(model, state, source, conv1d):
    """Copy a GPT-2 state dict into model (transposing Conv1D weights when conv1d is True); name every mismatch."""
    if not (isinstance(state, dict) and all(isinstance(t, torch.Tensor) for t in state.values())):
        raise CheckpointError(f"{source} does not hold a state dict (names mapped to tensors): save the model's "
                              f"state_dict(), or pass its Hugging Face folder")
    ours = {name: tensor for name, tensor in model.state_dict().items() if name != "lm_head.weight"}
    mapped = {}
    for key, tensor in state.items():
        name = key.removeprefix("transformer.")
        if name.endswith(CAUSAL_MASK_BUFFERS) or name == "lm_head.weight":
            continue
        if conv1d and name.endswith(CONV1D_WEIGHTS) and tensor.dim() == 2:
            tensor = tensor.t()  # Conv1D (in, out) -> nn.Linear (out, in)
        mapped["transformer." + name] = tensor
    missing, unexpected = sorted(ours.keys() - mapped.keys()), sorted(mapped.keys() - ours.keys())
    if missing or unexpected:
        raise CheckpointError(f"{source} does not match a {model.config.n_layer}-layer GPT-2: missing "
                              f"{missing[:6] or 'nothing'}, unexpected {unexpected[:6] or 'nothing'}")
    for name, tensor in mapped.items():
        if tensor.shape != ours[name].shape:
            raise CheckpointError(f"{source}: {name} has shape {tuple(tensor.shape)}, the config implies "
                                  f"{tuple(ours[name].shape)}; config.json and the weights disagree")
    with torch.no_grad():
        for name, tensor in mapped.items():
            ours[name].copy_(tensor.float())


def export_weights(model):
    """The model's weights under Hugging Face GPT-2's names and layouts (the inverse of load_weights)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight, stored once
        state[name] = tensor.t() if name.endswith(CONV1D_WEIGHTS) else tensor
    return state


def build_model(config, source):
    """GPT(config), after checking the shape numbers a config file could get wrong (GPT would fail deep inside)."""
    for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckpointError(f"{source} gives {field} = {value!r}; it must be a positive whole number")
    if not isinstance(config.layer_norm_epsilon, (int, float)) or not config.layer_norm_epsilon > 0:
        raise CheckpointError(f"{source} gives layer_norm_epsilon = {config.layer_norm_epsilon!r}; it must be > 0")
    if config.n_embd % config.n_head:
        raise CheckpointError(f"{source}: n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
    return GPT(config)


def config_from_hf(hf, source):
    """GPTConfig from a Hugging Face GPT-2 config.json dict; refuse what the block cannot compute."""
    if not isinstance(hf, dict):
        raise CheckpointError(f"{source} holds a JSON {type(hf).__name__}, not the object of a GPT-2 config.json")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{source} is a {hf.get('model_type')!r} model; this script reads GPT-2 only")
    activations = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "relu": "relu"}
    if hf.get("activation_function", "gelu_new") not in activations:
        raise CheckpointError(f"{source} uses activation {hf['activation_function']!r}; the block here computes "
                              f"GPT-2's tanh GELU (gelu_new) or relu")
    n_inner = hf.get("n_inner") or 4 * hf["n_embd"]  # null means GPT-2's 4 x n_embd
    if not isinstance(n_inner, int) or n_inner % hf["n_embd"] or hf.get("scale_attn_by_inverse_layer_idx") or \
            hf.get("reorder_and_upcast_attn") or not hf.get("scale_attn_weights", True) or \
            hf.get("add_cross_attention") or not hf.get("tie_word_embeddings", True):
        raise CheckpointError(f"{source} changes GPT-2's architecture (n_inner, attention scaling, cross-attention or "
                              f"untied embeddings), which this script does not implement")
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
                     n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                     activation=activations[hf.get("activation_function", "gelu_new")],
                     mlp_ratio=n_inner // hf["n_embd"], layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5))


def config_to_hf(config):
    """The config.json that transformers' GPT2LMHeadModel.from_pretrained expects."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_ctx": config.block_size,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
            "n_inner": None if config.mlp_ratio == 4 else config.mlp_ratio * config.n_embd,
            "activation_function": "gelu_new" if config.activation == "gelu" else "relu",
            "layer_norm_epsilon": config.layer_norm_epsilon, "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
            "initializer_range": 0.02, "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": True,
            "scale_attn_weights": True, "use_cache": True, "torch_dtype": "float32",
            "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}}


def load_hf_folder(folder):
    """A local Hugging Face GPT-2 folder: config.json plus model.safetensors (or pytorch_model.bin)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no config.json: pass a Hugging Face GPT-2 folder, a gpt.py ckpt.pt, or "
                              f"one of {', '.join(HUB_MODELS)}")
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
        config = config_from_hf(hf, config_path)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{config_path} is not a GPT-2 config.json ({type(error).__name__}: {error})") from None
    if (folder / "model.safetensors").is_file():
        state, source = read_safetensors(folder / "model.safetensors"), folder / "model.safetensors"
    elif (folder / "pytorch_model.bin").is_file():
        source = folder / "pytorch_model.bin"
        try:  # weights_only: a pickle that tries to build anything but tensors is refused, not executed
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(f"{source} could not be read safely ({type(error).__name__}); prefer "
                                  f"model.safetensors, or download the file again") from None
    else:
        raise CheckpointError(f"{folder} has neither model.safetensors nor pytorch_model.bin "
                              f"(sharded checkpoints are not read here)")
    model = build_model(config, config_path)
    load_weights(model, state, source, conv1d=True)
    return model


GPT_PY_FORMAT = "nanoverse-gpt-v1"  # the format tag gpt.py writes into its checkpoints
GPT_ROPE_FORMAT = "nanoverse-gpt-rope-v1"  # ... and gpt_rope.py into its own


def read_torch_checkpoint(path, what_to_do):
    """torch.load with weights_only: a pickle that tries to build anything but tensors and plain data is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, random bytes, or a pickle that wants to run code: one answer for all
        # torch's own message suggests weights_only=False, which would run whatever the file contains: not repeated.
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint ({type(error).__name__}): it is "
                              f"truncated, damaged or no checkpoint at all; {what_to_do}") from None


def load_gpt_py_checkpoint(path):
    """A ckpt.pt written by gpt.py: its GPT uses nn.Linear already, so the weights copy without transposes."""
    sources = f"pass a gpt.py ckpt.pt, a Hugging Face folder, or one of {', '.join(HUB_MODELS)}"
    checkpoint = read_torch_checkpoint(path, sources)
    kind = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if kind == CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is this script's own checkpoint: continue that run with --init_from resume "
                              f"--out_dir {Path(path).parent}, or start anew from the folder its --save_hf wrote")
    saved = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if kind == GPT_ROPE_FORMAT or (isinstance(saved, dict) and "rope_theta" in saved):
        raise CheckpointError(f"{path} is a gpt_rope.py checkpoint (rotary positions); GPT-2 learns a table of "
                              f"positions, so only gpt.py checkpoints (--pos learned) can be fine-tuned here")
    if kind not in (None, GPT_PY_FORMAT) or not isinstance(saved, dict) or \
            not isinstance(checkpoint.get("model"), dict):
        raise CheckpointError(f"{path} is not a gpt.py checkpoint" + (f" (its format is {kind!r})" if kind else "")
                              + f": {sources}")
    if not saved.get("bias", True):  # a Hugging Face GPT-2 folder always has biases; without them none could be saved
        raise CheckpointError(f"{path} was trained without biases (gpt.py --no-bias); GPT-2 has them, so train gpt.py "
                              f"with --bias to fine-tune here")
    if saved.get("pos", "learned") != "learned":
        raise CheckpointError(f"{path} uses {saved['pos']} positions; GPT-2 learns a position table, so train gpt.py "
                              f"with --pos learned")
    meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), dict) else {}
    tokenizer = meta.get("tokenizer", "gpt2")  # gpt.py keeps the data's meta.json
    vocab_size = saved.get("vocab_size")
    hint = "prepare the data with `python prepare_data.py <dataset> --tokenizer gpt2` before gpt.py"
    if tokenizer != "gpt2":
        raise CheckpointError(f"{path} was trained with the {tokenizer} tokenizer, not GPT-2's: {hint}")
    if not isinstance(vocab_size, int) or vocab_size < 50257:
        raise CheckpointError(f"{path} has vocab_size {vocab_size!r}, fewer token ids than GPT-2's 50257: {hint}")
    fields = {field.name for field in dataclasses.fields(GPTConfig)}
    config = GPTConfig(**{key: value for key, value in saved.items() if key in fields})
    model = build_model(config, path)
    state = {key.removeprefix("_orig_mod."): value for key, value in checkpoint["model"].items()}
    load_weights(model, state, path, conv1d=False)
    return model


# ----------------------------------------------------------------------------------------------------------------------
# Downloading from the Hugging Face Hub with nothing but urllib. https://huggingface.co/<repo>/resolve/main/<file>
# answers a large (LFS) file with a redirect whose X-Linked-Etag header is the file's sha256, which we check.


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # hand the redirect back to download(): its headers carry the checksum


def _sha256_from_headers(headers):
    for name in ("X-Linked-Etag", "ETag"):
        value = (headers.get(name) or "").strip().removeprefix("W/").strip('"')
        if re.fullmatch(r"[0-9a-f]{64}", value):  # small (git) files have a 40-digit sha1 ETag instead: not ours
            return value
    return None


def download(url, path):
    """Fetch url into path with a progress bar; resume a partial download; verify the published sha256."""
    path = Path(path)
    if path.is_file():  # only a complete, verified download ever gets its final name
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".incomplete")
    opener = urllib.request.build_opener(_NoRedirect)
    expected_sha256, first_hop = None, True
    try:
        for _ in range(10):  # follow at most 10 redirects by hand
            done = partial.stat().st_size if partial.is_file() else 0
            headers = {"User-Agent": "nanoverse-finetune-gpt2"} | ({"Range": f"bytes={done}-"} if done else {})
            try:
                response = opener.open(urllib.request.Request(url, headers=headers), timeout=60)
            except urllib.error.HTTPError as error:
                if error.code in (301, 302, 303, 307, 308) and error.headers.get("Location"):
                    if first_hop:
                        expected_sha256 = _sha256_from_headers(error.headers)
                    first_hop = False
                    url = urllib.parse.urljoin(url, error.headers["Location"])
                    continue
                if error.code == 416 and done:  # asked to resume past the end: the partial file is bad, start over
                    partial.unlink()
                    continue
                raise
            break
        else:
            raise CheckpointError(f"too many redirects while downloading {path.name}")
        with response:
            if first_hop:
                expected_sha256 = _sha256_from_headers(response.headers)
            resumed = response.status == 206  # 200 means the server ignored Range: start from zero
            done = done if resumed else 0
            total = int(response.headers.get("Content-Length") or 0) + done
            with open(partial, "ab" if resumed else "wb") as f, \
                    tqdm(total=total or None, initial=done, unit="B", unit_scale=True, desc=path.name) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise CheckpointError(f"could not download {url} ({getattr(error, 'reason', error)}): check the network, or "
                              f"pass a local Hugging Face folder with --init_from path/to/folder") from None
    if expected_sha256:
        digest = hashlib.sha256()
        with open(partial, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
        if digest.hexdigest() != expected_sha256:
            partial.unlink()
            raise CheckpointError(f"{path.name} is corrupt (sha256 {digest.hexdigest()[:12]}... instead of "
                                  f"{expected_sha256[:12]}...): run again to download it afresh")
    os.replace(partial, path)
    return path


def download_hub_model(name, cache_dir):
    """config.json and model.safetensors of a GPT-2 on the Hub, cached under cache_dir/name."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    folder = Path(cache_dir) / name
    for filename in ("config.json", "model.safetensors"):
        download(f"{endpoint}/{HUB_MODELS[name]}/resolve/main/{filename}", folder / filename)
    return folder


def load_model(config):
    """Build the model named by --init_from: a Hub name, a Hugging Face folder, or a gpt.py checkpoint."""
    source = config.init_from
    if source in HUB_MODELS:
        folder = Path(config.cache_dir) / source
        return load_hf_folder(folder if (folder / "model.safetensors").is_file()
                              else download_hub_model(source, config.cache_dir))
    if Path(source).is_dir():
        return load_hf_folder(source)
    if Path(source).is_file():
        if source.endswith((".safetensors", ".json")):
            return load_hf_folder(Path(source).parent)
        return load_gpt_py_checkpoint(source)
    raise CheckpointError(f"--init_from {source!r} is neither {', '.join(HUB_MODELS)} nor an existing folder or "
                          f"checkpoint file")


# ----------------------------------------------------------------------------------------------------------------------
# The tokenizer: GPT-2's byte-level BPE through tiktoken, plus the two files Hugging Face keeps it in.

# GPT-2's pre-tokenisation pattern (contractions, letters, digits, punctuation, spaces), as tiktoken's "gpt2" uses it.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def load_tokenizer():
    """tiktoken's GPT-2 encoding: built offline from $NANOVERSE_DATA/gpt2 when present, else tiktoken's download."""
    mirror = Path(os.environ.get("NANOVERSE_DATA", "/nonexistent")) / "gpt2"
    if (mirror / "encoder.json").is_file() and (mirror / "vocab.bpe").is_file():
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(mirror / "vocab.bpe"),
                                                              encoder_json_file=str(mirror / "encoder.json"))
        return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={EOT: 50256})
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as error:
        raise SystemExit(f"could not load GPT-2's tokenizer ({type(error).__name__}): connect to the internet once, "
                         f"or set NANOVERSE_DATA to a folder holding gpt2/encoder.json and gpt2/vocab.bpe") from None


def bytes_to_unicode():
    """GPT-2's map from the 256 byte values to printable characters, used in vocab.json and merges.txt.

    Printable Latin-1 bytes stand for themselves; the other 68 (control characters, space, ...) are moved to
    characters 256 and up, so that every token is a visible string with no spaces inside.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, moved = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + moved)
            moved += 1
    return mapping


def gpt2_vocab_and_merges(encoding):
    """vocab.json (token string -> id) and merges.txt lines, recovered from tiktoken's ranks.

    In GPT-2 a token's id is its merge rank, so merge number r created token 256 + r. Which two pieces did it join?
    Run BPE on the token's bytes until two pieces remain: those are the pair. (A merge ranked after the token could in
    principle get in the way; in GPT-2's vocabulary none does, which the tests check for all 50,000 merges.)
    """
    byte_to_char = bytes_to_unicode()
    specials = {special: encoding.encode_single_token(special) for special in encoding.special_tokens_set}
    ranks = {encoding.decode_single_token_bytes(i): i for i in range(encoding.n_vocab) if i not in specials.values()}
    vocab = {"".join(byte_to_char[b] for b in token): i for token, i in ranks.items()} | specials
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        pieces = [bytes([b]) for b in token]
        while len(pieces) > 2:  # apply the lowest-ranked merge available, as BPE does
            i = min(range(len(pieces) - 1), key=lambda j: ranks.get(pieces[j] + pieces[j + 1], math.inf))
            pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
        merges.append(" ".join("".join(byte_to_char[b] for b in piece) for piece in pieces))
    return vocab, merges


# ----------------------------------------------------------------------------------------------------------------------
# Data: documents separated by <|endoftext|>, packed into block_size windows.


def split_documents(text, max_lines=32):
    """Blank lines separate documents (poems, songs, stanzas). A long one (a file of songs with no blank line between
    them, say) is cut into passages of max_lines lines, the units of the train/validation split. Returns
    (passage, ends_document) pairs: only a document's last passage is followed by <|endoftext|>."""
    passages = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = [line.rstrip() for line in block.split("\n") if line.strip()]
        passages += [("\n".join(lines[i:i + max_lines]), i + max_lines >= len(lines))
                     for i in range(0, len(lines), max_lines)]
    return passages


def read_documents(path):
    """(passage, ends_document) pairs from a .txt file or from every .txt file in a folder, in reading order."""
    path = Path(path)
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise SystemExit(f"--input {path} is not a .txt file or a folder of .txt files: point it at your text")
    documents = []
    for file in files:
        raw = file.read_bytes()
        text = raw.decode("utf-8", errors="replace")
        if "\ufffd" in text and "\ufffd".encode() not in raw:
            print(f"warning: {file} is not valid UTF-8; {text.count(chr(0xFFFD))} bytes were replaced by \ufffd")
        documents += split_documents(text)
    if len(documents) < 2:
        raise SystemExit(f"--input {path} holds {len(documents)} passage(s); fine-tuning needs at least two "
                         f"(one to train on, one to validate), separated by a blank line")
    return documents


def encode_documents(passages, encoding):
    """Token ids of (passage, ends_document) pairs: <|endoftext|> after a document's end, so the model learns where a
    text ends, and a newline where the next passage goes on with the same document."""
    ids, newline = [], encoding.encode_ordinary("\n")
    for passage, ends_document in passages:
        ids += encoding.encode_ordinary(passage) + ([encoding.eot_token] if ends_document else newline)
    return np.array(ids, dtype=np.int64)


def split_passages(passages, val_fraction, seed):
    """A seeded split of the passages into (train, validation), each side kept in reading order. A validation passage
    whose text is also in training (a chorus sung twice) is dropped: it would be scored as unseen text. Where a document
    continues on the other side, its text breaks here, so the passage before the break ends with <|endoftext|>."""
    order = np.random.default_rng(seed).permutation(len(passages))
    val_ids = set(order[:max(1, round(len(passages) * val_fraction))].tolist())
    train_ids = [i for i in range(len(passages)) if i not in val_ids]
    train_texts = {passages[i][0] for i in train_ids}
    val_ids = [i for i in sorted(val_ids) if passages[i][0] not in train_texts]
    if not val_ids:
        raise SystemExit("every validation passage is also in the training text (the input repeats itself), so "
                         "nothing is left to validate on: give more varied text")

    def side(ids):
        chosen = set(ids)
        return [(passages[i][0], passages[i][1] or i + 1 not in chosen) for i in ids]

    return side(train_ids), side(val_ids)


PREPARE = "`python prepare_data.py lyrics --tokenizer gpt2 --input DIR` (or your dataset)"


def check_data_source(config):
    """An --input or --data_dir the user named must exist and be what it claims: never train on something else."""
    if config.input:
        path = Path(config.input)
        if not path.exists():
            raise SystemExit(f"--input {config.input} does not exist: point it at a .txt file or a folder of them")
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        if not files:
            raise SystemExit(f"--input {config.input} holds no .txt files: point it at your text")
        if not any(file.read_bytes().strip() for file in files):  # before a model is downloaded for nothing
            raise SystemExit(f"--input {config.input} holds no text, only empty lines: point it at your text")
    elif config.data_dir != Config.data_dir:
        data_dir = Path(config.data_dir)
        if not data_dir.is_dir():
            raise SystemExit(f"--data_dir {data_dir} does not exist: run {PREPARE} first, or pass --input "
                             f"FILE_OR_FOLDER of .txt files")
        if not (data_dir / "meta.json").is_file():
            raise SystemExit(f"--data_dir {data_dir} has no meta.json, so it is no prepare_data.py folder: run "
                             f"{PREPARE} first, or pass .txt files with --input {data_dir}")
    if not config.input and (Path(config.data_dir) / "meta.json").is_file():  # checked again, in full, when read
        try:
            tokenizer = json.loads((Path(config.data_dir) / "meta.json").read_text()).get("tokenizer")
        except (ValueError, AttributeError):
            tokenizer = "unreadable"
        if tokenizer != "gpt2":
            raise SystemExit(f"{config.data_dir} holds {tokenizer} tokens, not GPT-2's: run {PREPARE} again")


def load_corpus(config, encoding):
    """(train token ids, validation token ids, validation documents as text, the file or folder they came from)."""
    check_data_source(config)
    data_dir, mirror = Path(config.data_dir), os.environ.get("NANOVERSE_DATA")
    source = config.input
    if not source and config.data_dir == Config.data_dir and not (data_dir / "meta.json").is_file() and mirror \
            and (Path(mirror) / "poetry_lyrics").is_dir():
        source = str(Path(mirror) / "poetry_lyrics")  # nothing named and no data/lyrics: the local mirror's lyrics
    if source:
        train_passages, val_passages = split_passages(read_documents(source), config.val_fraction, config.seed)
        train, val = encode_documents(train_passages, encoding), encode_documents(val_passages, encoding)
        val_documents = [passage for passage, _ in val_passages]
        np.random.default_rng(config.seed).shuffle(val_documents)  # BLEU takes passages from the front: mix them
    elif (data_dir / "meta.json").is_file():
        hint = f"run {PREPARE} again"
        source = str(data_dir)
        try:
            meta = json.loads((data_dir / "meta.json").read_text())
            train, val = (np.memmap(data_dir / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")
                          for split in ("train", "val"))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"{data_dir} is not a complete prepare_data.py folder ({error}): {hint}") from None
        if meta.get("tokenizer") != "gpt2" or meta.get("format") != "nanoverse-tokens-v1":
            raise SystemExit(f"{data_dir} holds {meta.get('tokenizer')} tokens, not GPT-2's: {hint}")
        head = np.asarray(val[:2_000_000])
        ends = np.flatnonzero(head == encoding.eot_token)  # prepare_data.py puts <|endoftext|> between documents,
        if len(head) == len(val) and (len(ends) == 0 or ends[-1] != len(val) - 1):  # not after the last one
            ends = np.append(ends, len(val))
        val_documents = [encoding.decode(val[start + 1:end].tolist()) for start, end in zip([-1, *ends[:199]], ends)]
    else:
        raise SystemExit(f"no training data in {data_dir}: run {PREPARE} first, or pass --input FILE_OR_FOLDER of "
                         f".txt files")
    for name, tokens in (("training", train), ("validation", val)):
        if len(tokens) <= config.block_size + 1:
            raise SystemExit(f"the {name} split has {len(tokens)} tokens, too few for --block_size "
                             f"{config.block_size}: give more text or a smaller --block_size")
    return train, val, val_documents, source


class TokenWindows(Dataset):
    """Consecutive windows of block_size + 1 tokens (neighbours share one): x is the window, y the same shifted by
    one, so every token is a target once."""

    def __init__(self, tokens, block_size):
        self.tokens, self.block_size = tokens, block_size

    def __len__(self):
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, i):
        start = i * self.block_size
        window = torch.from_numpy(np.asarray(self.tokens[start:start + self.block_size + 1], dtype=np.int64))
        return window[:-1], window[1:]


# ----------------------------------------------------------------------------------------------------------------------
# Generation: logits processors, then greedy or sampled choice, with a KV cache.


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
        logits[row, banned] = float("-inf")
    return logits


def keep_top_k(logits, k):
    """Only the k highest scores stay candidates (Fan et al. 2018); the rest get probability 0."""
    kth_best = torch.topk(logits, min(k, logits.size(-1))).values[:, [-1]]
    return logits.masked_fill(logits < kth_best, float("-inf"))


def keep_top_p(logits, p):
    """Nucleus sampling (Holtzman et al. 2019): keep the smallest set of tokens whose probability reaches p."""
    sorted_logits, sorted_ids = torch.sort(logits, descending=True)
    sorted_probs = F.softmax(sorted_logits, dim=-1)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= p  # the tokens before this one already reach p
    return logits.scatter(1, sorted_ids, sorted_logits.masked_fill(outside, float("-inf")))


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


class GreedyScreen:
    """Greedy decoding's choice, with the output layer read in half precision (batch 1, on a CPU).

    The output layer is the largest single read of a decoded token: 50257 x 768 floats, 154 MB, a third of GPT-2
    small, while greedy decoding needs only the position of the largest logit. A float16 copy of it is half the bytes
    and gives every logit to within a margin we can bound. With h the final hidden state (n numbers), w_j the float32
    row of token j, h16 and w16_j their float16 roundings and a_j their product (added up in float32, which PyTorch's
    CPU kernels do unless told otherwise, then rounded to float16), by the Cauchy-Schwarz inequality:
      |a_j - h.w_j| <= |h|*|w16_j - w_j| + |h16 - h|*|w16_j|     (rounding the weights, then h)
                       + n * 2**-22 * |h|*|w16_j|                  (float32 sums of n terms, in both products, twice)
                       + 2**-10 * |a_j| + 2**-24                   (rounding the result to float16)
    Any row whose a_j plus its margin reaches the best a_k minus its margin could hold the largest logit. There are
    usually a handful, and their float32 logits decide. So the token is the float32 argmax over the candidates,
    which is the float32 argmax over the whole vocabulary, up to float32's own rounding: two logits within about 1e-7
    of each other, relatively, may come out in either order from two float32 kernels that add in different orders
    (ours and transformers' too). The float16 copy is a snapshot: once the weights change, generate stops using it.
    """

    def __init__(self, weight):
        self.weight = weight  # (vocab, n_embd) float32, the model's own: the candidates' exact logits come from it
        self.version, self.device = weight._version, weight.device  # the snapshot's weights
        self.half = weight.detach().to(torch.float16, memory_format=torch.contiguous_format)
        self.rounding = torch.empty(weight.size(0), device=weight.device)  # |w16_j - w_j| per row
        self.norm = torch.empty(weight.size(0), device=weight.device)  # |w16_j|
        for start in range(0, weight.size(0), 4096):  # a slice at a time: no float32 copy of the whole matrix
            rows = slice(start, start + 4096)
            rounded = self.half[rows].float()
            self.rounding[rows] = (rounded - weight.detach()[rows]).norm(dim=1)
            self.norm[rows] = rounded.norm(dim=1)
        self.sums = weight.size(1) * 2 ** -22

    def still_fits(self, weight):
        """The snapshot is of these weights, unchanged since, and the float32 sums are not allowed float16 steps."""
        return (weight is self.weight and weight._version == self.version and weight.device == self.device
                and not getattr(torch._C, "_get_cpu_allow_fp16_reduced_precision_reduction", bool)())

    def argmax(self, h):
        """h (1, n_embd) float32 -> the token with the largest float32 logit, (1, 1)."""
        h16 = h.half()
        approx = F.linear(h16, self.half)[0].float()
        if not torch.isfinite(approx).all():  # beyond float16's range (65504), or not a number: the plain product
            return F.linear(h, self.weight).argmax(dim=-1, keepdim=True)
        h_norm = h.norm()
        margin = (h_norm * self.rounding + ((h16.float() - h).norm() + self.sums * h_norm) * self.norm
                  + 2 ** -10 * approx.abs() + 2 ** -24)
        candidates = torch.nonzero(approx + margin >= (approx - margin).max()).flatten()  # ascending, like argmax
        return candidates[F.linear(h, self.weight[candidates]).argmax(dim=-1, keepdim=True)]


@torch.inference_mode()  # no_grad, and also no version counters or view tracking: a little less work per operation
def generate(model, idx, max_new_tokens, eot_id=None, use_cache=True, generator=None, **decoding):
    """Append up to max_new_tokens tokens to idx (B, T); rows that produced eot_id are padded with it.

    With the KV cache each step feeds only the newest token through the network. When the context reaches
    block_size, the window slides forward by half a window and the cache is rebuilt: learned positions are absolute.
    """
    model.eval()
    block_size = model.config.block_size
    window_start = max(0, idx.size(1) - block_size)
    finished = torch.zeros(idx.size(0), 1, dtype=torch.bool, device=idx.device)
    past_kv = None
    plain_greedy = (decoding.get("temperature", 1.0) == 0 and decoding.get("repetition_penalty", 1.0) == 1.0
                    and not decoding.get("no_repeat_ngram_size", 0))
    screen = getattr(model, "greedy_screen", None) if plain_greedy and idx.size(0) == 1 else None
    if screen is not None and not screen.still_fits(model.lm_head.weight):
        screen = None
    for _ in range(max_new_tokens):
        if idx.size(1) - window_start > block_size:
            window_start, past_kv = idx.size(1) - max(1, block_size // 2), None
        if past_kv is None:
            h, past_kv = model.hidden_states(idx[:, window_start:])
        else:
            h, past_kv = model.hidden_states(idx[:, -1:], past_kv=past_kv)
        if not use_cache:
            past_kv = None
        h = h[:, -1, :]  # only the last position's logits choose the next token
        if screen is not None:
            next_token = screen.argmax(h.float())
        else:
            next_token = choose_next_token(model.lm_head(h).float(), idx, generator=generator, **decoding)
        if eot_id is not None:
            next_token = next_token.masked_fill(finished, eot_id)
            finished |= next_token == eot_id
        idx = torch.cat([idx, next_token], dim=1)
        if finished.all():
            break
    return idx


def use_decoding_layout(model):
    """Store each weight matrix with out >= in column by column: the same numbers and (out, in) shape, transposed.

    Decoding one token at a time is a chain of matrix-vector products, one per weight matrix, so its speed is how fast
    the weights stream from memory. On the CPU measured in benchmarks/RESULTS.md (other CPUs may differ), a product
    streams a matrix fastest when the matrix's longer side is the contiguous one: per token, the 50257 x 768 output
    layer took 5.6 ms stored (in, out) against 10.4 ms in nn.Linear's (out, in), and c_fc (768 -> 3072) 0.45 ms
    against 0.63, while mlp.c_proj (3072 -> 768) is faster as it is (0.45 ms against 0.58); the square attn.c_proj was
    a little faster (in, out) too. So the matrices with out >= in are stored (in, out), the order of GPT-2's own Conv1D
    layers. Training is slower with the output layer stored that way (its weight gradient costs more), so only the
    generate and evaluate modes, on a CPU, call this.

    Greedy decoding at batch 1 also gets a GreedyScreen (the output layer in half precision, same tokens), if a
    quick timing here finds it faster than the float32 product: on a CPU without fast float16 arithmetic it is not,
    and on a busy machine the timing can go either way (the tokens are the same either way).
    """
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features >= module.in_features:
            # .data swaps the tensor inside the same Parameter, so wte stays tied to lm_head; an embedding lookup
            # then reads a strided column, a trifle next to the products.
            module.weight.data = module.weight.data.t().contiguous().t()
    screen = GreedyScreen(model.lm_head.weight)
    h = torch.randn(1, model.config.n_embd, generator=torch.Generator().manual_seed(0))  # leaves torch's own seed be

    def best_of_3(product):
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            product()
            seconds.append(time.perf_counter() - start)
        return min(seconds)

    with torch.inference_mode():
        if best_of_3(lambda: screen.argmax(h)) < best_of_3(lambda: model.lm_head(h)):
            model.greedy_screen = screen


def decoding_options(config):
    return dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                repetition_penalty=config.repetition_penalty, no_repeat_ngram_size=config.no_repeat_ngram_size)


def sample_texts(model, encoding, prompt, config, device, seed):
    """num_return_sequences continuations of prompt, cut at <|endoftext|>; one for greedy decoding, whose copies
    would all be the same."""
    generator = torch.Generator(device=device).manual_seed(seed)
    prompt_ids = encoding.encode(prompt, allowed_special={EOT}) or [encoding.eot_token]
    rows = 1 if config.temperature == 0 else config.num_return_sequences
    idx = torch.tensor([prompt_ids] * rows, device=device)
    out = generate(model, idx, config.max_new_tokens, eot_id=encoding.eot_token, generator=generator,
                   **decoding_options(config))
    texts = []
    for row in out[:, len(prompt_ids):].tolist():
        if encoding.eot_token in row:
            row = row[:row.index(encoding.eot_token)]
        texts.append(prompt + encoding.decode(row))
    return texts


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation: perplexity, BLEU and distinct-n.


@torch.no_grad()
def evaluate_loss(model, tokens, config, device, autocast):
    """Mean cross-entropy over the validation windows (the first eval_batches batches, in order)."""
    windows = TokenWindows(tokens, config.block_size)
    # Its own generator: starting a loader draws a seed, and from the global generator that would move training's
    # dropout masks, so that an evaluation would change what the next steps learn.
    loader = DataLoader(windows, batch_size=config.batch_size, sampler=SequentialSampler(windows),
                        generator=torch.Generator())
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    for i, (x, y) in enumerate(loader):
        if config.eval_batches and i >= config.eval_batches:
            break
        with autocast:
            _, loss, _ = model(x.to(device), y.to(device))
        total_loss, total_tokens = total_loss + loss.item() * y.numel(), total_tokens + y.numel()
    model.train(was_training)
    return total_loss / total_tokens


def tokenize_13a(line):
    """sacrebleu's default tokenisation, the one of WMT's mteval-v13a.pl: split off punctuation and symbols, and
    periods and commas unless they sit between digits."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = re.sub(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 ", f" {line} ")
    line = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", line)
    line = re.sub(r"([\.,])([^0-9])", r" \1 \2", line)
    line = re.sub(r"([0-9])(-)", r"\1 \2 ", line)
    return line.split()


def ngram_counts(words, n):
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(hypotheses, references, max_order=4):
    """Corpus BLEU in 0..100 (Papineni et al. 2002) as sacrebleu computes it by default: 13a tokens, n-gram
    precisions clipped by the reference counts and summed over the corpus, the geometric mean of 1- to 4-gram
    precisions, 'exp' smoothing for orders with no match, and the brevity penalty."""
    correct, total = [0] * max_order, [0] * max_order
    hypothesis_length = reference_length = 0
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        hyp_words, ref_words = tokenize_13a(hypothesis.rstrip()), tokenize_13a(reference.rstrip())
        hypothesis_length, reference_length = hypothesis_length + len(hyp_words), reference_length + len(ref_words)
        for n in range(1, max_order + 1):
            hyp_ngrams, ref_ngrams = ngram_counts(hyp_words, n), ngram_counts(ref_words, n)
            correct[n - 1] += sum(min(count, ref_ngrams[gram]) for gram, count in hyp_ngrams.items())
            total[n - 1] += max(0, len(hyp_words) - n + 1)
    # Brevity penalty: precision alone would reward saying little, so a corpus shorter than the references pays.
    if hypothesis_length >= reference_length:
        brevity_penalty = 1.0
    else:
        brevity_penalty = math.exp(1 - reference_length / hypothesis_length) if hypothesis_length else 0.0
    if not any(correct):
        return 0.0
    log_precisions, unmatched = [], 1.0
    for n in range(max_order):
        if total[n] == 0:  # no n-grams of this order at all: BLEU is 0 (sacrebleu's log(0) stand-in)
            return 0.0
        if correct[n] == 0:  # 'exp' smoothing (NIST's, Chen & Cherry 2014 method 3): 1/2, 1/4, ... of a match
            unmatched *= 2
            log_precisions.append(math.log(100.0 / (unmatched * total[n])))
        else:
            log_precisions.append(math.log(100.0 * correct[n] / total[n]))
    return brevity_penalty * math.exp(sum(log_precisions) / max_order)


def distinct_n(texts, n):
    """Distinct n-grams divided by all n-grams over the texts (Li et al. 2016 divide by the tokens instead; dividing
    by the n-grams makes 1.0, never repeating itself, the top for every n)."""
    grams = [gram for text in texts for gram in ngram_counts(tokenize_13a(text), n).elements()]
    return len(set(grams)) / len(grams) if grams else math.nan  # no n-grams at all: nothing to measure, not 0


def bleu_passages(documents, config):
    """(prompt, reference) pairs: bleu_prompt_lines lines of a held-out document, then the next lines.

    The first passage of every document comes first; only when there are fewer documents than bleu_samples (a few
    long ones, such as one file per artist) do later passages of the same documents follow, round by round.
    """
    needed = config.bleu_prompt_lines + config.bleu_reference_lines
    documents = [[line for line in document.split("\n") if line.strip()] for document in documents]
    pairs = []
    for start in range(0, max(map(len, documents), default=0) - needed + 1, needed):
        for lines in documents:
            if len(pairs) == config.bleu_samples:
                return pairs
            if len(lines) >= start + needed:
                passage = lines[start:start + needed]
                pairs.append(("\n".join(passage[:config.bleu_prompt_lines]) + "\n",
                              "\n".join(passage[config.bleu_prompt_lines:])))
    return pairs


@torch.no_grad()
def evaluate_generation(model, encoding, pairs, config, device):
    """BLEU of greedy continuations against the real next lines, and distinct-1/2 of those continuations.
    --repetition_penalty and --no_repeat_ngram_size apply, so the scores show the decoding you chose."""
    hypotheses = []
    options = decoding_options(config) | {"temperature": 0.0}
    for prompt, reference in pairs:
        prompt_ids = encoding.encode_ordinary(prompt)[-(model.config.block_size // 2):]
        budget = len(encoding.encode_ordinary(reference)) + 8
        out = generate(model, torch.tensor([prompt_ids], device=device), budget, eot_id=encoding.eot_token,
                       **options)[0, len(prompt_ids):].tolist()
        text = encoding.decode([t for t in out if t != encoding.eot_token])
        hypotheses.append("\n".join(text.strip("\n").split("\n")[:config.bleu_reference_lines]))
    references = [reference for _, reference in pairs]
    return corpus_bleu(hypotheses, references), distinct_n(hypotheses, 1), distinct_n(hypotheses, 2), hypotheses


# ----------------------------------------------------------------------------------------------------------------------
# Fine-tuning


def learning_rate_at(step, total_steps, config):
    """Linear warmup up to learning_rate, then a straight line that would reach 0 at step total_steps.

    Steps count from 0, so the first step already moves (at learning_rate / warmup_steps) and the last one, number
    total_steps - 1, still takes learning_rate / (total_steps - warmup_steps): no step is spent at a rate of 0.
    Hugging Face's get_linear_schedule_with_warmup decays the same way.
    """
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    return config.learning_rate * max(0.0, (total_steps - step) / max(1, total_steps - config.warmup_steps))


def make_optimizer(model, config, device):
    """AdamW (Loshchilov & Hutter 2019) with weight decay on matrices only, never on biases and LayerNorm gains."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
    # fused: one pass over memory updates each parameter, instead of a pass per arithmetic operation (on CPU too).
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                             fused=device.type in ("cuda", "cpu"))


def keep_freed_memory():
    """On Linux (glibc), keep memory that training frees inside the process, for the next step to reuse.

    Every training step allocates and frees the same large tensors: on GPT-2 small at batch 4 x 128, the 103 MB of
    logits, their gradient, the output layer's 154 MB weight gradient. glibc gives each block over 32 MiB its own
    mmap and returns it to the system when it is freed, so the next step gets fresh pages, and the kernel zeroes each
    4 KiB page on first touch: about an eighth of a CPU training step on the machine in benchmarks/RESULTS.md. Two
    settings (the environment variables MALLOC_MMAP_MAX_=0 and MALLOC_TRIM_THRESHOLD_ do the same) serve those blocks
    from the heap and keep the heap's free memory: faster steps, about 15% more peak memory. Returns whether they
    took; on other C libraries (macOS, Windows, musl) it does nothing, and under a preloaded jemalloc or tcmalloc it
    reports True but changes nothing. It holds for the whole process, for good: in a notebook, the kernel keeps the
    memory it freed until it restarts. GPU memory has PyTorch's own caching allocator.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
        return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False


def random_states():
    """The global random generators that dropout draws from (the CPU's, and each GPU's)."""
    return {"rng": torch.get_rng_state(), **({"cuda_rng": torch.cuda.get_rng_state_all()}
                                             if torch.cuda.is_available() else {})}


def save_checkpoint(path, model, optimizer, config, progress, history, origin, rng=None):
    """Write the checkpoint to a temporary file, then rename it: a crash never leaves half a checkpoint.

    progress: the step, the epochs done and the training losses since the last evaluation row. origin names the base
    model and the data of the first run, so that a resumed run's model card can still say what it started from.
    The random states (rng: as they were after the last finished step) make a resumed run draw the same dropout masks
    as an unbroken one.
    """
    checkpoint = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "model_config": dataclasses.asdict(model.config), "config": dataclasses.asdict(config),
                  **progress, "history": history, "origin": origin, **(rng or random_states())}
    temporary = Path(f"{path}.tmp")
    torch.save(checkpoint, temporary)
    os.replace(temporary, path)


def finetune(model, train_tokens, val_tokens, config, device, autocast, scaler, resume=None, log=print,
             on_sample=None, rank=0, world_size=1, origin=None):
    """Train model in place for config.epochs, or exactly config.max_steps steps when that is set (it wins, as in
    Hugging Face's Trainer); returns (one row per evaluation, per-step losses, progress as saved in checkpoints)."""
    raw_model = model  # the plain module: checkpoints, evaluation and samples use it, never the compiled/DDP wrapper
    if config.freeze_layers:  # embeddings (so also the tied output layer) and the lowest blocks stay as GPT-2 left them
        for module in [raw_model.transformer.wte, raw_model.transformer.wpe,
                       *raw_model.transformer.h[:config.freeze_layers]]:
            module.requires_grad_(False)
    if rank == 0:
        trainable_count = sum(p.numel() for p in raw_model.parameters() if p.requires_grad)
        frozen = f" (embeddings and the lowest {config.freeze_layers} blocks frozen)" if config.freeze_layers else ""
        print(f"training {trainable_count:,} of {sum(p.numel() for p in raw_model.parameters()):,} parameters{frozen}")
    optimizer = make_optimizer(raw_model, config, device)
    train_set = TokenWindows(train_tokens, config.block_size)
    windows_per_step = config.batch_size * config.grad_accum_steps * world_size
    steps_per_epoch = len(train_set) // windows_per_step
    if steps_per_epoch == 0:
        raise SystemExit(f"the training split has {len(train_set)} windows of {config.block_size} tokens, fewer than "
                         f"one step takes ({windows_per_step}): use a smaller --batch_size or --block_size")
    total_steps = config.max_steps if config.max_steps >= 0 else config.epochs * steps_per_epoch
    # recent_losses: the training losses since the last evaluation row, which that row's train_loss averages.
    step, history, step_losses, recent_losses = 0, [], [], []
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        step, history, recent_losses = resume["step"], resume["history"], resume.get("recent_losses", [])
        torch.set_rng_state(resume["rng"])
        if "cuda_rng" in resume and torch.cuda.is_available() and len(resume["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(resume["cuda_rng"])
    rng_after_step = random_states()  # what a Ctrl-C saves: a step it interrupts is done again, with the same masks
    if config.compile:
        model = torch.compile(model)
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    trainable = [p for p in raw_model.parameters() if p.requires_grad]

    def progress():
        return {"step": step, "epochs": round(step / steps_per_epoch, 2), "recent_losses": recent_losses}

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="fine-tuning", disable=rank != 0, leave=False)
    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            # The order of the windows depends only on the seed and the epoch, so a resumed run sees the same batches.
            # The loader gets its own generator too: starting an iterator draws a seed from it, and drawn from the
            # global one it would shift a resumed run's dropout masks away from those of an unbroken run.
            order = torch.Generator().manual_seed(config.seed + epoch)
            if world_size > 1:
                sampler = torch.utils.data.DistributedSampler(train_set, world_size, rank, seed=config.seed + epoch)
            else:
                sampler = RandomSampler(train_set, generator=order)
            batches = iter(DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                                      generator=order))
            for _ in range((step - epoch * steps_per_epoch) * config.grad_accum_steps):
                next(batches)  # resuming in the middle of an epoch: skip the batches already trained on
            epoch_start, steps_timed, train_seconds = time.time(), 0, 0.0
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
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                rng_after_step = random_states()
                bar.update(1)
                seconds = time.time() - step_start
                recent_losses.append(step_loss)
                steps_timed, train_seconds = steps_timed + 1, train_seconds + seconds
                step_losses.append((step, step_loss))
                if rank == 0 and (step % config.log_interval == 0 or step == total_steps):
                    record = {"step": step, "loss": round(step_loss, 4), "lr": lr, "ms_per_step": round(seconds * 1e3),
                              "tokens_per_sec": round(windows_per_step * config.block_size / seconds)}
                    log(record, f"step {step:5d} | loss {step_loss:.4f} | lr {lr:.2e} | {seconds * 1e3:.0f} ms/step "
                                f"| {record['tokens_per_sec']} tok/s")
                if rank == 0 and on_sample and config.sample_every and step % config.sample_every == 0:
                    on_sample(step)
                    model.train()
            if rank == 0:
                val_loss = evaluate_loss(raw_model, val_tokens, config, device, autocast)
                seconds = time.time() - epoch_start
                # Epochs completed so far: 1.0 at the end of the first, 0.3 where --max_steps stopped inside it, so
                # that a run resumed inside an epoch adds a row with a new number rather than a second "epoch 1".
                row = {"epoch": round(step / steps_per_epoch, 2), "step": step,
                       "train_loss": round(float(np.mean(recent_losses)), 4),
                       "val_loss": round(val_loss, 4), "val_ppl": round(math.exp(val_loss), 2),
                       "seconds": round(seconds, 1),  # the epoch's wall time, evaluation and samples included
                       "tokens_per_sec": round(steps_timed * windows_per_step * config.block_size / train_seconds)}
                history.append(row)
                recent_losses = []
                log(row, f"epoch {row['epoch']:g} | train loss {row['train_loss']:.4f} | val loss {val_loss:.4f} | "
                         f"val ppl {row['val_ppl']:.2f} | {seconds:.1f} s")
                save_checkpoint(Path(config.out_dir) / "ckpt.pt", raw_model, optimizer, config, progress(), history,
                                origin)
    except KeyboardInterrupt:  # Ctrl-C: keep what was learned, then evaluate and save as after a normal finish
        if rank == 0:
            tqdm.write(f"\ninterrupted at step {step}: saving {Path(config.out_dir) / 'ckpt.pt'}")
            save_checkpoint(Path(config.out_dir) / "ckpt.pt", raw_model, optimizer, config, progress(), history,
                            origin, rng_after_step)
    bar.close()
    raw_model.eval()
    return history, step_losses, progress()


# ----------------------------------------------------------------------------------------------------------------------
# Saving a folder that transformers and the Hugging Face Hub read as is.


def write_text(path, text):
    temporary = Path(f"{path}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def drop_unsaved_records(path, step):
    """Before a resumed run appends to log.jsonl: drop the records of steps after its checkpoint, and a line cut short.
    A crash can log steps that no checkpoint saved, and those steps are about to be trained again. Records without a
    step (the evaluations before and after training) are kept."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and (not isinstance(record.get("step"), int) or record["step"] <= step):
            kept.append(line + "\n")
    write_text(path, "".join(kept))


def save_hf_folder(model, folder, encoding, card=""):
    """config.json, model.safetensors, vocab.json + merges.txt (the tokenizer) and README.md (the model card)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors({name: t.float() for name, t in export_weights(model).items()}, folder / "model.safetensors")
    write_text(folder / "config.json", json.dumps(config_to_hf(model.config), indent=2) + "\n")
    vocab, merges = gpt2_vocab_and_merges(encoding)
    write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    write_text(folder / "tokenizer_config.json", json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "model_max_length": model.config.block_size, "bos_token": EOT,
         "eos_token": EOT, "unk_token": EOT, "add_prefix_space": False}, indent=2) + "\n")
    write_text(folder / "README.md", card)


def public_name(source):
    """The last part of a path: a model card is published, and the folders of the machine that trained the model
    mean nothing to its readers (and may be private)."""
    return Path(str(source)).name or str(source)


def model_card(model, origin, settings=None, progress=None, results=(), columns=("base", "fine-tuned")):
    """A short Hugging Face model card: YAML metadata, what the model is, how to use it, how it was trained.

    origin: {"base_model": what the first run started from, "data": [what each run trained on]}. settings: the
    training Config as a dict, or None when the model was only converted (--mode generate from a base model).
    progress: {"step": optimizer steps in all, "epochs": passes over the training data}.
    """
    base = origin["base_model"]
    hub_id = HUB_MODELS.get(base)
    size = f"A {model.config.n_layer}-layer GPT-2 ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)"
    if settings is None:
        title = "GPT-2 in the Hugging Face format"
        summary = f"{size}: `{public_name(base)}` converted by nanoverse's `finetune_gpt2.py`, without any training."
        training = ""
    else:
        title = "GPT-2 fine-tuned on verse"
        data = ", then on ".join(f"`{public_name(name)}`" for name in origin["data"])
        summary = f"{size} started from `{public_name(base)}` and fine-tuned on {data} with nanoverse's " \
                  f"`finetune_gpt2.py`."
        table = "".join(f"| {name} | {before} | {after} |\n" for name, before, after in results)
        if table:
            table = f"\n| metric (validation split) | {columns[0]} | {columns[1]} |\n| --- | --- | --- |\n{table}"
        training = (
            f"\n## Training\n\n"
            f"block_size {settings['block_size']}, batch {settings['batch_size']} x {settings['grad_accum_steps']} "
            f"accumulation, AdamW at {settings['learning_rate']:g} (linear warmup {settings['warmup_steps']} steps, "
            f"linear decay), weight decay {settings['weight_decay']}, dropout {settings['dropout']}, "
            f"{progress['step']} optimizer steps ({progress['epochs']:g} epochs), frozen blocks "
            f"{settings['freeze_layers']}.\n{table}")
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2, text-generation, poetry, lyrics, nanoverse]
{f'base_model: {hub_id}' if hub_id else ''}
---

# {title}

{summary}

## Use

```python
from transformers import pipeline

generator = pipeline("text-generation", model="path/or/hub-id")
print(generator("Walking down the road of life", max_new_tokens=60, do_sample=True, top_p=0.95)[0]["generated_text"])
```
{training}
## Limitations

A small model trained on a small corpus: it imitates the style of its training text, repeats itself, and knows
nothing reliable. Check the license of the text you trained on before you publish the weights.
"""


def plot_losses(step_losses, history, path):
    """The training loss per step and the validation loss per epoch, as a picture."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*step_losses), label="train loss (per step)", alpha=0.7)
    if history:
        ax.plot([row["step"] for row in history], [row["val_loss"] for row in history], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    fig.tight_layout()
    temporary = Path(f"{path}.tmp")
    fig.savefig(temporary, dpi=120, format="png")
    plt.close(fig)
    os.replace(temporary, path)


def print_table(rows, columns):
    widths = [max(len(str(c)), *(len(str(row[i])) for row in rows)) for i, c in enumerate(columns)]
    print(" | ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(v).ljust(w) for v, w in zip(row, widths)))


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def check_config(config):
    """Name a bad option in one sentence."""
    for field, choices in (("mode", ("finetune", "generate", "evaluate")),
                           ("dtype", ("auto", "float32", "bfloat16", "float16"))):
        if getattr(config, field) not in choices:
            raise SystemExit(f"--{field} must be one of {', '.join(choices)}, not {getattr(config, field)!r}")
    for field in ("block_size", "epochs", "batch_size", "grad_accum_steps", "log_interval", "num_return_sequences",
                  "max_new_tokens", "bleu_prompt_lines", "bleu_reference_lines"):
        if getattr(config, field) < 1:
            raise SystemExit(f"--{field} must be at least 1, not {getattr(config, field)}")
    for field in ("warmup_steps", "weight_decay", "grad_clip", "freeze_layers", "eval_batches", "sample_every",
                  "threads", "top_k", "no_repeat_ngram_size", "bleu_samples", "temperature"):
        if getattr(config, field) < 0:
            raise SystemExit(f"--{field} must be 0 or more, not {getattr(config, field)}")
    if config.max_steps < -1 or config.max_steps == 0:
        raise SystemExit(f"--max_steps must be -1 (train for --epochs) or a number of steps, not {config.max_steps}")
    if not 0 <= config.seed < 2**32:  # numpy's and torch's generators both accept this range
        raise SystemExit(f"--seed must be between 0 and {2**32 - 1}, not {config.seed}")
    if not config.learning_rate > 0:
        raise SystemExit(f"--learning_rate must be more than 0, not {config.learning_rate}")
    if not 0.0 <= config.dropout < 1.0:
        raise SystemExit(f"--dropout must be in [0, 1), not {config.dropout}")
    if not 0.0 < config.val_fraction < 1.0:
        raise SystemExit(f"--val_fraction must be in (0, 1), not {config.val_fraction}")
    if not 0.0 < config.top_p <= 1.0:
        raise SystemExit(f"--top_p must be in (0, 1], not {config.top_p}")
    if config.mode == "evaluate" and config.save_hf:
        raise SystemExit("--save_hf is written by --mode finetune or --mode generate, not by --mode evaluate")
    if not config.repetition_penalty > 0:
        raise SystemExit(f"--repetition_penalty must be more than 0 (1 changes nothing), not "
                         f"{config.repetition_penalty}")


def parse_config(argv=None):
    """Config from command-line flags spelled as the fields (help = the field's comment), and the names typed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-f" in argv and argv.index("-f") + 1 < len(argv) and argv[argv.index("-f") + 1].endswith(".json"):
        del argv[argv.index("-f"):argv.index("-f") + 2]  # a notebook kernel's "-f kernel.json": not for us
    try:
        comments = dict(re.findall(r"^\s+(\w+): [^#\n]*#\s*(.+)$", inspect.getsource(Config), re.M))
    except (OSError, TypeError):  # no source file (e.g. some notebooks): flags still work, without help text
        comments = {}
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], allow_abbrev=False)  # no guesses
    for field in dataclasses.fields(Config):
        default = "auto" if field.default is None else field.default  # None: chosen for the device
        # No defaults in the parser: what comes back is exactly what was typed (a resumed run keeps its own
        # settings for the rest); the help still shows the defaults.
        if field.type is bool:
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"{comments.get(field.name, '')} (default: {default})")
        else:
            parser.add_argument(f"--{field.name}", type=field.type, default=argparse.SUPPRESS,
                                help=f"{comments.get(field.name, '')} (default: {default})")
    given = vars(parser.parse_args(argv))
    config = Config(**given)
    check_config(config)
    return config, set(given)


def pick_device(name):
    """torch.device for --device; a name torch does not know, or a device this machine lacks, in one sentence."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise SystemExit(f"--device {name} is not a device name: use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: this PyTorch has no CUDA device; use --device cpu or auto")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise SystemExit(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered "
                         f"from 0; use --device cuda or auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise SystemExit(f"--device {name}: this PyTorch has no MPS device; use --device cpu or auto")
    return torch.device(name)


def pick_device_and_dtype(config):
    device = pick_device(config.device)
    dtype = config.dtype
    if dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        dtype = "bfloat16" if bf16 else "float16" if device.type == "cuda" else "float32"
    dtype = getattr(torch, dtype)
    # Autocast runs matrix products in 16 bits and keeps the weights and the sensitive sums in float32.
    autocast = nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # fp16 gradients underflow without it
    return device, autocast, scaler


def check_output_folder(path, flag):
    """Refuse up front a folder that could never be created because a file stands where it or a parent would go,
    rather than fail after minutes of work."""
    for part in [Path(path), *Path(path).parents]:
        if part.exists():
            if not part.is_dir():
                raise SystemExit(f"{flag} {path}: {part} is a file, not a folder; choose another path")
            return


# A resumed run is the same run. These settings decide which windows each step sees and which weights have optimizer
# moments, so they are always the checkpoint's; the others are the checkpoint's unless typed again (for example
# `--max_steps 400` to train longer, or `--input` to go on with other text).
KEPT_ON_RESUME = ("block_size", "batch_size", "grad_accum_steps", "seed", "freeze_layers")
DEFAULT_ON_RESUME = ("save_hf", "val_fraction", "epochs", "max_steps", "learning_rate", "warmup_steps", "weight_decay",
                     "grad_clip", "dropout", "eval_batches", "log_interval", "sample_every", "bleu_samples",
                     "bleu_prompt_lines", "bleu_reference_lines", "prompt", "max_new_tokens", "num_return_sequences",
                     "temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size")


def resume_settings(config, saved, given):
    """Set config's training and data settings to those the checkpoint's run used (saved), as explained above."""
    restored = []
    for field in KEPT_ON_RESUME + DEFAULT_ON_RESUME:
        if field not in saved or saved[field] == getattr(config, field):
            continue
        if field in given and field not in KEPT_ON_RESUME:
            continue  # typed again, so asked for
        if field in given:
            print(f"note: resuming with the checkpoint's --{field} {saved[field]}; --{field} "
                  f"{getattr(config, field)} applies to fresh runs only")
        else:
            restored.append(f"--{field} {saved[field]}")
        setattr(config, field, saved[field])
    if not {"input", "data_dir"} & given:  # no data named: the data the run was trained on
        config.input, config.data_dir = saved.get("input", ""), saved.get("data_dir", Config.data_dir)
    if restored:
        print(f"resuming with the run's own settings: {' '.join(restored)}")


def load_resume_checkpoint(path):
    """This script's own checkpoint and the model in it; anything else is named in one sentence."""
    fresh = "start a fresh run with another --out_dir (or delete that file)"
    if not path.is_file():
        raise SystemExit(f"--init_from resume needs {path}: train once without it first")
    checkpoint = read_torch_checkpoint(path, fresh)
    kind = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if kind == GPT_PY_FORMAT:
        raise CheckpointError(f"{path} is a gpt.py checkpoint, not a fine-tuning run to resume: fine-tune from it "
                              f"with --init_from {path} and another --out_dir")
    if kind != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} was not written by finetune_gpt2.py (format {kind!r}): {fresh}")
    missing = [key for key in ("model", "model_config", "optimizer", "config", "step", "history", "rng")
               if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is a damaged finetune_gpt2.py checkpoint (no {', '.join(missing)}): {fresh}")
    try:
        model = build_model(GPTConfig(**checkpoint["model_config"]), path)
        model.load_state_dict(checkpoint["model"])
    except CheckpointError:
        raise
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path} is a damaged finetune_gpt2.py checkpoint ({type(error).__name__}): "
                              f"{fresh}") from None
    return checkpoint, model


def main(argv=None):
    config, given = parse_config(argv)
    try:
        run(config, given)
    except CheckpointError as error:
        raise SystemExit(str(error)) from None


def run(config, given=frozenset()):
    world_size = int(os.environ.get("WORLD_SIZE", 1))  # torchrun sets WORLD_SIZE, RANK and LOCAL_RANK
    rank = int(os.environ.get("RANK", 0))
    if world_size > 1 and config.mode != "finetune":
        raise SystemExit(f"--mode {config.mode} runs in one process: start it with python, not torchrun")
    if world_size > 1:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            config.device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(config.device)
    device, autocast, scaler = pick_device_and_dtype(config)
    if config.compile is None:
        config.compile = device.type == "cuda"
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.mode == "finetune" and device.type == "cpu":
        keep_freed_memory()
    out_dir = Path(config.out_dir)
    resuming = config.init_from == "resume"
    saved = None  # the settings of the run being resumed
    if resuming and (out_dir / "ckpt.pt").is_file():
        saved = read_torch_checkpoint(out_dir / "ckpt.pt", "start a fresh run with another --out_dir")
        own = isinstance(saved, dict) and saved.get("format") == CHECKPOINT_FORMAT  # else refused, with reasons, below
        saved = saved.get("config") if own and isinstance(saved.get("config"), dict) else None
        if saved is not None and config.mode != "generate":
            resume_settings(config, saved, given)
    # Everything that can be refused is refused here, before a model is downloaded or a step is trained.
    if config.mode != "generate":
        check_data_source(config)
        check_output_folder(out_dir, "--out_dir")
    if config.save_hf:
        check_output_folder(config.save_hf, "--save_hf")
        # A folder holding a model is overwritten only by the run that wrote it, resumed (--init_from resume).
        own_folder = saved is not None and saved.get("save_hf") and \
            Path(saved["save_hf"]).resolve() == Path(config.save_hf).resolve()
        if not own_folder and (Path(config.save_hf) / "model.safetensors").exists():
            raise SystemExit(f"--save_hf {config.save_hf} already holds a model (model.safetensors): choose another "
                             f"folder (or delete that one)")
    if config.mode == "finetune" and not resuming and (out_dir / "ckpt.pt").exists():
        raise SystemExit(f"{out_dir} already holds a run (ckpt.pt): continue it with --init_from resume, or choose "
                         f"another --out_dir (or delete that one)")
    torch.manual_seed(config.seed + rank)
    log_mode = "w" if config.mode == "finetune" and not resuming else "a"  # a fresh run starts its log anew

    def log(record, line):
        nonlocal log_mode
        if rank == 0:  # the file first: a Ctrl-C between the two then loses a line on screen, never a record
            with open(out_dir / "log.jsonl", log_mode) as f:
                f.write(json.dumps(record) + "\n")
            log_mode = "a"
            tqdm.write(line)

    encoding = load_tokenizer()
    resume = None
    if resuming:
        resume, model = load_resume_checkpoint(out_dir / "ckpt.pt")
        saved = resume["config"]
        if config.mode == "finetune" and rank == 0:
            drop_unsaved_records(out_dir / "log.jsonl", resume["step"])
        origin = resume.get("origin") or {"base_model": saved.get("init_from", "?"),
                                          "data": [saved.get("input") or saved.get("data_dir", "?")]}
    else:
        model = load_model(config)
        origin = {"base_model": config.init_from, "data": []}
    if config.dropout != model.config.dropout:  # fine-tuning dropout, set in place: the weights stay as loaded
        model.config = dataclasses.replace(model.config, dropout=config.dropout)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = config.dropout
            elif isinstance(module, CausalSelfAttention):  # the fused kernel takes its dropout as an argument
                module.dropout = config.dropout
    if config.mode != "generate" and config.block_size > model.config.block_size:  # generation slides its own window
        raise SystemExit(f"--block_size {config.block_size} is longer than the model's context "
                         f"({model.config.block_size}): use a smaller one")
    if config.freeze_layers > model.config.n_layer:
        raise SystemExit(f"--freeze_layers {config.freeze_layers} is more than the model's {model.config.n_layer} "
                         f"blocks: use a number from 0 to {model.config.n_layer}")
    model.to(device)
    if model.config.vocab_size < encoding.n_vocab:
        raise SystemExit(f"the model has {model.config.vocab_size} token ids but GPT-2's tokenizer needs "
                         f"{encoding.n_vocab}: start from a GPT-2 checkpoint")
    prompt = config.prompt
    if prompt.startswith("FILE:"):
        if not Path(prompt[5:]).is_file():
            raise SystemExit(f"--prompt {prompt}: there is no file {prompt[5:]}")
        prompt = Path(prompt[5:]).read_text(encoding="utf-8", errors="replace")
    if rank == 0:
        started = f"{out_dir / 'ckpt.pt'} at step {resume['step']}, started from {origin['base_model']}" \
            if resuming else config.init_from
        print(f"model: {started} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
              f"{model.config.n_layer} layer{'s' if model.config.n_layer > 1 else ''}) on {device}")

    if config.mode != "finetune" and device.type == "cpu":
        use_decoding_layout(model)

    if config.mode == "generate":
        for text in sample_texts(model, encoding, prompt, config, device, config.seed):
            print(f"{text}\n{'-' * 80}")
        if config.save_hf:
            if resuming:  # the checkpoint was trained, and its card says how; anything else was only converted
                card = model_card(model, origin, resume["config"], {"step": resume["step"],
                                                                    "epochs": resume.get("epochs", 0)})
            else:
                card = model_card(model, origin)
            save_hf_folder(model, config.save_hf, encoding, card)
            print(f"\nsaved a Hugging Face folder in {config.save_hf}")
        return

    train_tokens, val_tokens, val_documents, data_source = load_corpus(config, encoding)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = bleu_passages(val_documents, config) if config.bleu_samples else []
    if rank == 0:
        print(f"data: {data_source} ({len(train_tokens):,} training and {len(val_tokens):,} validation tokens)")
        if len(pairs) < config.bleu_samples:
            needed = config.bleu_prompt_lines + config.bleu_reference_lines
            print(f"note: the validation split holds only {len(pairs)} passages of {needed} non-empty lines "
                  f"(--bleu_samples {config.bleu_samples}), so BLEU " + (
                      "is skipped" if not pairs else f"rests on {len(pairs)} passages: read it as a rough figure"))

    def measure(label):
        val_loss = evaluate_loss(model, val_tokens, config, device, autocast)
        scores = {"val loss": f"{val_loss:.4f}", "val perplexity": f"{math.exp(val_loss):.2f}"}
        if pairs:
            bleu, distinct_1, distinct_2, _ = evaluate_generation(model, encoding, pairs, config, device)
            scores |= {f"BLEU ({len(pairs)} passages)": f"{bleu:.2f}"}
            for n, value in ((1, distinct_1), (2, distinct_2)):  # "-" when the continuations hold no n-grams
                scores[f"distinct-{n}"] = "-" if math.isnan(value) else f"{value:.3f}"
        log({"eval": label} | scores, f"{label}: " + ", ".join(f"{k} {v}" for k, v in scores.items()))
        return scores

    # After a resume the starting point is the checkpoint, not the base model (which is not loaded again): say so.
    before_label = f"at resume (step {resume['step']})" if resuming else "base model"
    if rank == 0:
        before = measure(before_label)
        before_samples = sample_texts(model, encoding, prompt, config, device, config.seed)
    if config.mode == "evaluate":
        for text in before_samples:
            print(f"{text}\n{'-' * 80}")
        return

    def show_sample(step):  # tqdm.write keeps the text off the progress bar's line
        tqdm.write(f"--- sample at step {step}:\n{sample_texts(model, encoding, prompt, config, device, step)[0]}")

    if not origin["data"] or origin["data"][-1] != data_source:
        origin["data"] = [*origin["data"], data_source]
    history, step_losses, progress = finetune(model, train_tokens, val_tokens, config, device, autocast, scaler,
                                              resume, log, show_sample, rank, world_size, origin)
    if rank == 0:
        after = measure("fine-tuned")
        after_samples = sample_texts(model, encoding, prompt, config, device, config.seed)
        if history:
            print("\ntraining")
            columns = list(history[0])
            print_table([[row[c] for c in columns] for row in history], columns)
        print(f"\n{before_label} vs fine-tuned")
        results = [(name, before[name], after[name]) for name in before]
        print_table(results, ["metric", before_label, "fine-tuned"])
        for i, (old, new) in enumerate(zip(before_samples, after_samples)):
            print(f"\n=== sample {i + 1}, {before_label} ===\n{old}\n=== sample {i + 1}, fine-tuned ===\n{new}")
        if step_losses:
            plot_losses(step_losses, history, out_dir / "loss.png")
        if config.save_hf:
            card = model_card(model, origin, dataclasses.asdict(config), progress, results,
                              (before_label, "fine-tuned"))
            save_hf_folder(model, config.save_hf, encoding, card)
            print(f"\nsaved a Hugging Face folder in {config.save_hf}")
    if world_size > 1:
        torch.distributed.destroy_process_group()


# %% Run
if __name__ == "__main__":
    main()
