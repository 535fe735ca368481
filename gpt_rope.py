"""gpt.py with rotary position embeddings (RoPE) in place of its learned position table.

The model is GPT-2's architecture with GPT-2's parameter names (Radford et al. 2019, "Language Models are Unsupervised
Multitask Learners"; the transformer of Vaswani et al. 2017, "Attention Is All You Need"): token
embeddings, causal multi-head self-attention, an MLP, pre-LayerNorm residual blocks and a tied output layer. The same
file trains it on the token files that prepare_data.py writes (on the CPU, or on many GPUs through torchrun) and
samples text from the result with a KV cache.
What differs from gpt.py (`diff -u gpt.py gpt_rope.py`; Su et al. 2021, "RoFormer", sec. 3.2): no position table
(wpe); each attention layer turns every query and key by angles proportional to its position (rotary_tables,
rotate_half), so the score of query m and key n depends only on m - n; --rope_theta sets the base of the angles.

Run:
    python prepare_data.py shakespeare_char && python gpt_rope.py     # CPU: 2500 steps, val loss 1.786, ~1 min
    python gpt_rope.py --sample --start "ROMEO:" --num_samples 3        # sample from out-gpt-rope/ckpt.pt
    python gpt_rope.py --preset shakespeare --out_dir out-rope --batch_size 64 --learning_rate 1e-3 --max_iters 5000 \
        --lr_decay_iters 5000 --min_lr 1e-4 --warmup_iters 100   # GPU: nanoGPT's shakespeare_char recipe
    torchrun --standalone --nproc_per_node=8 gpt_rope.py --preset gpt2 --dataset shakespeare --out_dir out-gpt2-rope
    Colab: upload gpt_rope.py and prepare_data.py, then  !python prepare_data.py shakespeare_char && python gpt_rope.py

A --preset sets the model's shape (and "shakespeare" its dropout, 0.2) only: the training flags keep their
defaults unless you set them.
"""

import argparse
import dataclasses
import inspect
import json
import math
import os
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm


@dataclass
class Config:
    # --- data and outputs
    dataset: str = "shakespeare_char"  # token folder data/<dataset> written by `python prepare_data.py <dataset>`
    data_dir: str = ""  # read train.bin, val.bin and meta.json from here instead of data/<dataset>
    out_dir: str = "out-gpt-rope"  # checkpoint (ckpt.pt), log.jsonl and loss.png go here
    # --- model
    preset: str = ""  # a model shape from PRESETS (cpu, shakespeare, gpt2, gpt-small); explicit flags win
    n_layer: int = 1  # number of transformer blocks (1 learns fastest in a one-minute CPU run; see README)
    n_head: int = 4  # attention heads per block; must divide n_embd
    n_embd: int = 128  # width of the residual stream (embedding size)
    block_size: int = 64  # context length: the most tokens the model sees at once
    vocab_size: int = 0  # number of token ids; 0 takes it from meta.json
    dropout: float = 0.0  # dropout probability (0 for small data and short runs, ~0.2 to fight overfitting)
    bias: bool = True  # biases in Linear and LayerNorm layers, as in GPT-2
    attention: str = "sdpa"  # sdpa (fused scaled_dot_product_attention) or manual (the math written out)
    activation: str = "gelu"  # gelu (tanh approximation, as GPT-2) or relu (as the original transformer)
    mlp_ratio: int = 4  # width of the MLP over n_embd (GPT-2's n_inner = 4 * n_embd)
    layer_norm_epsilon: float = 1e-5  # LayerNorm's epsilon, GPT-2's value
    rope_theta: float = 10000.0  # RoPE base: channel pair i of a head turns by theta^(-2i/head_size) per position
    # --- training
    init_from: str = "scratch"  # scratch (new model) or resume (continue from out_dir/ckpt.pt exactly)
    max_iters: int = 2500  # optimizer steps in total
    batch_size: int = 8  # sequences per micro-batch per process (small batches learn more per token here)
    grad_accum_steps: int = 1  # micro-batches averaged into one optimizer step (a bigger batch in the same memory)
    learning_rate: float = 5e-3  # peak learning rate, reached after warmup (a tiny model tolerates a high one)
    min_lr: float = 5e-4  # learning rate at the end of the cosine decay
    warmup_iters: int = 50  # steps of linear warmup: the n-th step uses learning_rate * n / warmup_iters
    lr_decay_iters: int = 0  # steps of cosine decay; 0 means max_iters
    weight_decay: float = 0.1  # AdamW decoupled weight decay, applied to matrices only
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.99  # AdamW beta2 (0.99 for small batches, 0.95 for big ones)
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 disables
    eval_interval: int = 500  # evaluate on the validation split every this many steps (and at the end)
    eval_iters: int = 20  # batches per evaluation during training (a fixed sample); 0: whole split. The last is whole
    log_interval: int = 50  # print and log training loss every this many steps
    sample_interval: int = 0  # print a generated sample every this many steps; 0 only at the end
    patience: int = 0  # stop after this many evaluations without a better val loss; 0 never stops early
    seed: int = 1337  # random seed for initialisation, batches and dropout
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps
    dtype: str = "auto"  # float32, bfloat16 or float16 autocast; auto picks what is fastest on the device
    compile: bool = None  # torch.compile the model; by default on for CUDA, off on CPU (it did not help there)
    # --- sampling (--sample)
    sample: bool = False  # generate text from out_dir/ckpt.pt instead of training
    start: str = "\n"  # prompt text, or FILE:path to read the prompt from a file
    num_samples: int = 1  # how many samples to generate
    max_new_tokens: int = 500  # tokens to generate per sample
    temperature: float = 0.8  # <1 sharper, >1 more random; 0 always takes the most likely token
    top_k: int = 0  # keep only the k most likely tokens; 0 keeps all
    top_p: float = 1.0  # keep the smallest set of tokens whose probability adds up to top_p (nucleus sampling)
    repetition_penalty: float = 1.0  # >1 makes tokens already in the context less likely (Keskar et al. 2019)


# Model shapes. "cpu" is nanoGPT's 0.8M-parameter laptop model, "shakespeare" its 6-block character model, "gpt2" is
# GPT-2 small (124M with the 50257-token vocabulary) and "gpt-small" a deeper ~150M variant of it (16 blocks).
# A preset sets only these fields (the shape, and dropout for "shakespeare"): the training flags (learning rate,
# batch size, steps) keep their defaults unless you set them.
PRESETS = {
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    "shakespeare": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt-small": dict(n_layer=16, n_head=12, n_embd=768, block_size=1024),
}

# Fields that define the model: a resumed or sampled checkpoint always uses its own values.
MODEL_SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "rope_theta", "activation",
                      "mlp_ratio", "layer_norm_epsilon")
# What a resumed run takes from its checkpoint unless the command line sets it again (--max_iters 5000 to go on).
RESUMED_SETTINGS = ("max_iters", "batch_size", "grad_accum_steps", "learning_rate", "min_lr", "warmup_iters",
                    "lr_decay_iters", "weight_decay", "beta1", "beta2", "grad_clip", "dropout", "eval_interval",
                    "eval_iters", "log_interval", "sample_interval", "patience", "seed")
CHECKPOINT_FORMAT = "nanoverse-gpt-rope-v1"


# ----------------------------------------------------------------------------------------------------------------------
# The model, smallest piece first. Parameter names follow GPT-2's own checkpoint (wte, h.N.ln_1, attn.c_attn,
# attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f); GPT-2's own weights do not fit, as they need its position table.


def rotary_tables(block_size, head_size, theta):
    """RoPE's cos and sin, (block_size, head_size) each: position m turns channel pair i by the angle m * theta_i.

    theta_i = theta^(-2i/head_size) (RoFormer sec. 3.2.2), the frequencies of Vaswani et al.'s sinusoids: the first
    pairs turn fast, the last slowly. Pairs are rotate-half style, as in GPT-NeoX and Llama: channel j pairs with
    j + hs/2, so both halves get the same angles. RoFormer pairs neighbours (2i, 2i + 1) instead, reads each pair as a
    complex number z_i and multiplies it by e^(i m theta_i): the same rotation with the channels in another order.
    """
    inv_freq = theta ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)  # theta_i, (hs/2,)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq).repeat(1, 2)  # (T, hs)
    return angles.cos(), angles.sin()


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the halves of the last dimension: each pair (x[j], x[j + hs/2]) turned by 90 degrees."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


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
        cos, sin = rotary_tables(config.block_size, config.n_embd // config.n_head, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # computed once; not a weight, so not in checkpoints
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x, past_kv=None):
        B, T, C = x.size()  # batch, time (sequence length), channels (n_embd)
        head_size = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, head_size).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, head_size).transpose(1, 2)  # (B, nh, T, hs)
        # RoPE: turn q and k (never v) by their absolute positions, in float32; R(m)q . R(n)k = q . R(n - m)k, so the
        # scores see only relative positions. Keys in past_kv were turned at their own positions when they were new.
        start = 0 if past_kv is None else past_kv[0].size(2)
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]  # (T, hs)
        q = (q.float() * cos + rotate_half(q.float()) * sin).type_as(v)
        k = (k.float() * cos + rotate_half(k.float()) * sin).type_as(v)
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


def check_model_config(config):
    """Name a bad model shape in one sentence instead of failing deep inside torch."""
    if config.n_layer < 1 or config.n_head < 1 or config.n_embd < 1 or config.block_size < 1:
        raise ValueError("n_layer, n_head, n_embd and block_size must all be positive")
    if config.n_embd % config.n_head != 0:
        raise ValueError(f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head}): "
                         f"every head gets n_embd / n_head channels")
    if config.vocab_size < 1:
        raise ValueError("vocab_size must be positive (it normally comes from the dataset's meta.json)")
    for field, choices in (("attention", ("sdpa", "manual")), ("activation", ("gelu", "relu"))):
        if getattr(config, field) not in choices:
            raise ValueError(f"--{field} must be one of {', '.join(choices)}, not {getattr(config, field)!r}")
    if (config.n_embd // config.n_head) % 2 or not config.rope_theta > 1:  # RoPE turns channels in pairs
        raise ValueError(f"RoPE needs an even n_embd / n_head (now {config.n_embd} / {config.n_head}: change --n_embd "
                         f"or --n_head) and --rope_theta above 1 (now {config.rope_theta})")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), not {config.dropout}")


class GPT(nn.Module):
    """Embeddings, n_layer blocks, a final LayerNorm and the tied output layer that scores every next token."""

    def __init__(self, config):
        super().__init__()
        check_model_config(config)
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token id -> vector
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): the output layer reuses the token embedding matrix, so a token's input
        # vector and the direction that predicts it are one parameter; GPT-2 does this, and it saves vocab x C weights.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2 scales the layers that write into the residual stream by 1/sqrt(2 * n_layer) (two per block), so the
        # stream's variance does not grow with depth (Radford et al. 2019, sec. 2.3).
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        # GPT-2's initialisation: normal(0, 0.02) weights, zero biases; LayerNorm keeps its ones and zeros.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self):
        """Parameters counted once (the tied matrix is shared); RoPE has none."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, past_kv=None):
        """idx (B, T) token ids -> logits (B, T, vocab), the mean cross-entropy against targets, and the KV cache."""
        B, T = idx.size()
        past_length = 0 if past_kv is None else past_kv[0][0].size(2)  # tokens already in the cache
        if past_length + T > self.config.block_size:
            raise ValueError(f"sequence of {past_length + T} tokens is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C): no position vector; attention rotates q and k by position instead
        x = self.transformer.drop(x)
        present_kv = []
        for i, block in enumerate(self.transformer.h):
            x, layer_kv = block(x, None if past_kv is None else past_kv[i])
            present_kv.append(layer_kv)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab): a score for every possible next token at every position
        loss = None
        if targets is not None:  # position t is trained to predict token t + 1 (targets are idx shifted by one)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss, present_kv

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                 use_cache=True, generator=None):
        """Append max_new_tokens tokens to idx (B, T), one at a time, each sampled from the model's prediction.

        With the KV cache each new token runs through the network alone (one position, not the whole context).
        When the window is full it slides forward by half and the cache is rebuilt once: only offsets matter to RoPE,
        but its tables end at block_size, so positions restart at 0. use_cache=False computes the same thing the slow
        way, the whole window every step, which the tests use to check the cache.
        """
        block_size = self.config.block_size
        window_start = max(0, idx.size(1) - block_size)  # the model sees idx[:, window_start:]
        past_kv = None
        for _ in range(max_new_tokens):
            if idx.size(1) - window_start > block_size:  # the window is full: slide it and start a fresh cache
                window_start = idx.size(1) - max(1, block_size // 2)  # at least the newest token stays
                past_kv = None
            if past_kv is None:
                logits, _, past_kv = self(idx[:, window_start:])
            else:
                logits, _, past_kv = self(idx[:, -1:], past_kv=past_kv)
            if not use_cache:
                past_kv = None
            logits = logits[:, -1, :].float()  # only the last position predicts the next token: (B, vocab)
            next_token = sample_next_token(logits, idx[:, window_start:], temperature, top_k, top_p,
                                           repetition_penalty, generator)
            idx = torch.cat([idx, next_token], dim=1)
        return idx


def sample_next_token(logits, context, temperature, top_k, top_p, repetition_penalty, generator=None):
    """Turn the last position's logits (B, vocab) into one token id per row (B, 1)."""
    if repetition_penalty != 1.0:  # CTRL (Keskar et al. 2019): tokens already seen lose score
        seen = torch.gather(logits, 1, context)
        logits = logits.scatter(1, context, torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty))
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # greedy decoding
    logits = logits / temperature
    if top_k > 0:  # keep the k highest scores
        kth_best = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p < 1.0:  # nucleus sampling (Holtzman et al. 2019): the smallest set with probability >= top_p
        sorted_logits, sorted_ids = torch.sort(logits, descending=True)
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # mass before this token already reaches top_p
        sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, sorted_ids, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# ----------------------------------------------------------------------------------------------------------------------
# Data: the token files that prepare_data.py writes (raw arrays, no header; dtype and vocabulary in meta.json).


def find_data_dir(config):
    if config.data_dir:
        return Path(config.data_dir)
    here = Path("data") / config.dataset
    if not here.exists() and "__file__" in globals():  # also look beside this script when run from elsewhere
        beside_script = Path(__file__).resolve().parent / "data" / config.dataset
        if beside_script.exists():
            return beside_script
    return here


def load_dataset(config):
    """Open train.bin and val.bin as memory maps: the OS pages tokens in on demand, so any size fits."""
    data_dir = find_data_dir(config)
    hint = (f"run `python prepare_data.py {config.dataset}` first" if not config.data_dir
            else "point --data_dir at a folder that prepare_data.py wrote")
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        raise SystemExit(f"no token files in {data_dir} (meta.json is missing): {hint}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SystemExit(f"{meta_path} is not valid JSON ({error}): {hint}")
    if (not isinstance(meta, dict) or meta.get("format") != "nanoverse-tokens-v1"
            or meta.get("dtype") not in ("uint16", "uint32") or not isinstance(meta.get("vocab_size"), int)):
        raise SystemExit(f"{meta_path} is not a nanoverse-tokens-v1 file with dtype uint16/uint32 and a vocab_size: "
                         f"{hint}")
    splits = {}
    for split in ("train", "val"):
        path = data_dir / f"{split}.bin"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: {hint}")
        if path.stat().st_size % np.dtype(meta["dtype"]).itemsize:
            raise SystemExit(f"{path} is not a whole number of {meta['dtype']} tokens (cut short?): {hint}")
        tokens = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
        if len(tokens) <= config.block_size + 1:
            raise SystemExit(f"{path} holds {len(tokens)} tokens, too few for block_size {config.block_size}: "
                             f"use a smaller --block_size or more text")
        # One pass over the file (seconds even for GBs): an id past the vocabulary would otherwise stop training
        # with an index error deep inside the embedding.
        if int(tokens.max()) >= meta["vocab_size"]:
            raise SystemExit(f"{path} holds token id {int(tokens.max())} but meta.json's vocabulary has "
                             f"{meta['vocab_size']} ids, so the files come from different runs: {hint}")
        splits[split] = tokens
    return splits["train"], splits["val"], meta, data_dir


def same_tokens(meta_a, data_dir_a, meta_b, data_dir_b):
    """Whether token ids mean the same in two datasets: the same tokenizer, size and table (the characters, or the BPE
    model's merges where both files are still there). Resuming on ids that mean other things would train nonsense."""
    def table(meta, data_dir):
        if meta.get("tokenizer") == "bpe":
            path = Path(data_dir) / meta.get("bpe_model", "bpe.model")
            return path.read_text(encoding="utf-8") if path.is_file() else None
        return meta.get("itos")

    a, b = table(meta_a, data_dir_a), table(meta_b, data_dir_b)
    return ((meta_a.get("tokenizer"), meta_a.get("vocab_size")) == (meta_b.get("tokenizer"), meta_b.get("vocab_size"))
            and (a == b or meta_a.get("tokenizer") == "bpe" and None in (a, b)))


def get_batch(tokens, batch_size, block_size, generator, device):
    """batch_size random windows: x is block_size tokens, y the same window shifted one token to the right."""
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator).tolist()
    windows = torch.from_numpy(np.stack([tokens[i:i + block_size + 1].astype(np.int64) for i in starts]))
    x, y = windows[:, :-1], windows[:, 1:]
    if device.type == "cuda":  # pinned memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


@torch.no_grad()
def evaluate(model, tokens, config, device, autocast, whole_split=True, rank=0, world_size=1):
    """Mean loss over the validation split in consecutive block_size windows (a tail too short for one is skipped).

    Each window predicts all its positions, so positions see 0 .. block_size - 1 tokens of context, the same mix as
    a training batch. For a quick look during training (whole_split=False, eval_iters > 0) a fixed random sample of
    eval_iters * batch_size windows is used instead; fixed, so that successive evaluations compare like with like.
    """
    T = config.block_size
    starts = np.arange(0, len(tokens) - T, T)
    if config.eval_iters > 0 and not whole_split:
        starts = np.random.default_rng(0).choice(len(tokens) - T, config.eval_iters * config.batch_size)
    starts = starts[rank::world_size]  # each process takes its share; the sums are added up below
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)  # (sum of token losses, number of tokens); CPU, as MPS has no float64
    for i in range(0, len(starts), config.batch_size):
        batch = np.stack([tokens[s:s + T + 1].astype(np.int64) for s in starts[i:i + config.batch_size]])
        windows = torch.from_numpy(batch).to(device)
        with autocast:
            _, loss, _ = model(windows[:, :-1], windows[:, 1:])
        total += torch.tensor([loss.item() * windows[:, 1:].numel(), windows[:, 1:].numel()], dtype=torch.float64)
    if world_size > 1:  # NCCL adds up GPU tensors only
        total = total.to(device)
        torch.distributed.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


# ----------------------------------------------------------------------------------------------------------------------
# Training


def learning_rate_at(step, config):
    """Linear warmup, then cosine decay to min_lr (Loshchilov & Hutter 2017, without restarts), then flat."""
    decay_iters = config.lr_decay_iters or config.max_iters
    if step < config.warmup_iters:
        return config.learning_rate * (step + 1) / config.warmup_iters
    if step >= decay_iters:
        return config.min_lr
    progress = (step - config.warmup_iters) / max(1, decay_iters - config.warmup_iters)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.learning_rate - config.min_lr)


def make_optimizer(model, config, device):
    """AdamW (Loshchilov & Hutter 2019) with weight decay on the matrices (and the embedding) only.

    Decay pulls weights toward zero, which regularises matrices; for biases and LayerNorm gains (1-D tensors) it only
    fights their job, so GPT-2-style training exempts them.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # The fused kernel updates every tensor in one pass instead of a dozen small ones per tensor.
    fused = device.type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2), fused=fused)


def pick_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise SystemExit(f"--device {name}: this PyTorch sees no such CUDA GPU; use --device auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SystemExit("--device mps: this PyTorch has no Apple GPU (MPS) support here; use --device auto or cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise SystemExit(f"--device {name!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device


def pick_dtype(name, device):
    """The autocast precision. bf16 keeps float32's range (no loss scaling); fp16 needs a GradScaler."""
    if name == "auto":
        if device.type == "cuda":
            name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:  # on a CPU without bf16 instructions (AVX2 only) bf16 autocast measured 6-19x slower than float32
            name = "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# Peak dense bf16 tensor-core FLOP/s, to report model FLOPs utilisation (MFU; Chowdhery et al. 2022, appendix B).
# The first name found in the GPU's name counts, so the PCIe H100 (lower clocks, fewer units) comes before the SXM.
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
              "4090": 165e12}


def peak_flops_of(gpu_name):
    """The PEAK_FLOPS entry named as a whole word in the GPU's name ("NVIDIA L4", not "NVIDIA L40S"); None if none."""
    return next((flops for name, flops in PEAK_FLOPS.items() if re.search(rf"\b{name}\b", gpu_name)), None)


def flops_per_token(model, config):
    """Training FLOPs per token: 6 per weight (forward 2, backward 4) plus attention's scores and sums."""
    weights = model.num_parameters()
    return 6 * weights + 12 * config.n_layer * config.n_embd * config.block_size


def rng_states(batch_generator):
    states = {"torch": torch.get_rng_state(), "batches": batch_generator.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def save_checkpoint(path, model, optimizer, scaler, config, meta, data_dir, step, best_val_loss,
                    evals_without_improvement, rng, eval_due=False):
    """Everything needed to continue exactly: weights of the plain (uncompiled, unwrapped) module, optimizer moments,
    counters and random states. Written to a temporary file and renamed, so a crash never leaves half a file."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "config": dataclasses.asdict(config),
        "meta": meta,
        "data_dir": str(Path(data_dir).resolve()),
        "step": step,
        "best_val_loss": best_val_loss,
        "evals_without_improvement": evals_without_improvement,
        "rng": rng,
        "eval_due": eval_due,  # the evaluation of this step was interrupted: the resumed run does it first
    }
    temporary = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, temporary)
    os.replace(temporary, path)


def load_checkpoint(path):
    if not path.is_file():
        raise SystemExit(f"no checkpoint at {path}: train first with `python gpt_rope.py --out_dir {path.parent}`")
    try:  # weights_only: a checkpoint file can only hold tensors and plain data, never code to run
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SystemExit(f"{path} cannot be read as a checkpoint ({type(error).__name__}): it is truncated or not "
                         f"a PyTorch file; point --out_dir at a folder that gpt_rope.py trained")
    found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if found != CHECKPOINT_FORMAT:
        other = {"nanoverse-gpt-v1": "gpt.py", "nanoverse-gpt-rope-v1": "gpt_rope.py",
                 "nanoverse-finetune-gpt2-v1": "finetune_gpt2.py"}.get(found)
        raise SystemExit(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint"
                         + (f": {other} wrote it, so use {other}" if other else ": point --out_dir at a folder that "
                            "gpt_rope.py trained"))
    return checkpoint


def build_model(config):
    try:
        return GPT(config)
    except ValueError as error:
        raise SystemExit(f"bad model configuration: {error}")


def train(config):
    # --- processes and devices. torchrun starts one process per GPU and sets RANK / WORLD_SIZE / LOCAL_RANK.
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if ddp:
        use_nccl = torch.cuda.is_available() and config.device in ("auto", "cuda")
        torch.distributed.init_process_group(backend="nccl" if use_nccl else "gloo")  # gloo: CPU processes
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}") if use_nccl else pick_device(config.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        rank, world_size, device = 0, 1, pick_device(config.device)
    if device.type == "cpu":  # tiny values (denormals) are very slow on CPUs; treating them as zero changes nothing
        torch.set_flush_denormal(True)
    master = rank == 0  # only one process prints, logs and saves
    out_dir = Path(config.out_dir)
    checkpoint_path = out_dir / "ckpt.pt"

    checkpoint = None
    if config.init_from == "resume":
        checkpoint = load_checkpoint(checkpoint_path)
        for field in MODEL_SHAPE_FIELDS:  # the weights fix the shape (the rest: RESUMED_SETTINGS, parse_args)
            setattr(config, field, checkpoint["config"][field])
        if not config.data_dir and not config.dataset:  # no data named: the data it was trained on
            config.dataset, config.data_dir = checkpoint["config"]["dataset"], checkpoint["data_dir"]
    elif checkpoint_path.exists():  # a new run must not overwrite a trained model without being asked
        raise SystemExit(f"{out_dir} already holds a run ({checkpoint_path.name}): continue it with --init_from "
                         f"resume, or choose another --out_dir (or delete that one)")
    config.dataset = config.dataset or Config.dataset
    train_tokens, val_tokens, meta, data_dir = load_dataset(config)
    if checkpoint is not None and not same_tokens(checkpoint["meta"], checkpoint["data_dir"], meta, data_dir):
        before = checkpoint["meta"]
        raise SystemExit(f"{checkpoint_path} was trained on {checkpoint['data_dir']} ({before.get('tokenizer')} "
                         f"tokens, vocabulary {before.get('vocab_size')}), and the tokens of {data_dir} mean other "
                         f"things ({meta.get('tokenizer')}, vocabulary {meta.get('vocab_size')}): resume with "
                         f"--data_dir {checkpoint['data_dir']}")
    if config.vocab_size == 0:
        config.vocab_size = meta["vocab_size"]
    if config.vocab_size < meta["vocab_size"]:
        raise SystemExit(f"--vocab_size {config.vocab_size} is smaller than the dataset's {meta['vocab_size']} tokens")

    # --- model, optimizer, precision
    torch.manual_seed(config.seed)  # the same initial weights in every process
    model = build_model(config).to(device)
    optimizer = make_optimizer(model, config, device)
    dtype = pick_dtype(config.dtype, device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # fp16 gradients underflow without it
    batch_generator = torch.Generator().manual_seed(config.seed + rank)  # each process draws its own batches
    step, best_val_loss, evals_without_improvement, eval_due = 0, float("inf"), 0, False
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        step, best_val_loss = checkpoint["step"], checkpoint["best_val_loss"]
        evals_without_improvement, eval_due = checkpoint["evals_without_improvement"], checkpoint.get("eval_due", False)
        torch.set_rng_state(checkpoint["rng"]["torch"])
        batch_generator.set_state(checkpoint["rng"]["batches"])
        if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    raw_model = model  # the plain module: its state_dict has clean names, and sampling uses it
    compiled = config.compile if config.compile is not None else device.type == "cuda"
    if compiled:  # one-off compile time for faster steps; on a small CPU model it did not pay back
        model = torch.compile(model)
    eval_model = model
    if ddp:  # DistributedDataParallel averages the gradients of all processes during backward
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    tokenizer = None
    if master:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SystemExit(f"cannot create --out_dir {out_dir} ({error.strerror}): name a folder you can write to")
        log_file = open_log(out_dir / "log.jsonl", None if checkpoint is None else step)
        try:
            tokenizer = load_tokenizer(meta, data_dir)
        except SystemExit as error:  # samples are a bonus; training goes on without them
            print(f"no samples during training: {error}")
    tokens_per_step = config.batch_size * config.block_size * config.grad_accum_steps * world_size
    peak_flops = peak_flops_of(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    if master and checkpoint is not None:
        print(f"resuming {checkpoint_path} at step {step} on {data_dir}; the model keeps its shape ("
              + ", ".join(f"{field} {getattr(config, field)}" for field in MODEL_SHAPE_FIELDS) + ")")
        if step >= config.max_iters and not eval_due:
            print(f"already at step {step} of --max_iters {config.max_iters}: raise --max_iters to train further, "
                  f"with --lr_decay_iters {step} to stay at min_lr (without it the cosine decay stretches to the new "
                  f"--max_iters and the learning rate rises again)")
    if master:
        print(f"{raw_model.num_parameters() / 1e6:.2f}M parameters | {len(train_tokens):,} train / "
              f"{len(val_tokens):,} val tokens | {tokens_per_step:,} tokens/step | {device.type} {str(dtype)[6:]}"
              f"{' compiled' if compiled else ''}"
              f"{f' | {world_size} processes' if ddp else ''}")

    # --- the training loop
    started = interval_start = time.time()
    interval_loss, interval_steps, stop, interrupted = torch.zeros((), device=device), 0, False, False
    resume_rng = rng_states(batch_generator)
    progress = tqdm(total=config.max_iters, initial=step, disable=not master, dynamic_ncols=True, leave=False)
    try:
        while (step < config.max_iters or eval_due) and not stop:
            if not eval_due:  # (when it is, a Ctrl-C stopped this step's evaluation: that comes first)
                resume_rng = rng_states(batch_generator)  # what a checkpoint needs to replay this step if interrupted
                lr = learning_rate_at(step, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                for micro_step in range(config.grad_accum_steps):
                    x, y = get_batch(train_tokens, config.batch_size, config.block_size, batch_generator, device)
                    if ddp:  # average gradients across processes only once, after the last micro-batch
                        model.require_backward_grad_sync = micro_step == config.grad_accum_steps - 1
                    with autocast:
                        _, loss, _ = model(x, y)
                    loss = loss / config.grad_accum_steps  # the step's gradient is the mean over its micro-batches
                    scaler.scale(loss).backward()
                    interval_loss += loss.detach()
                if config.grad_clip > 0:  # one oversized gradient should not wreck the weights
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                resume_rng = rng_states(batch_generator)  # the step is done: a Ctrl-C from here on resumes after it
                eval_due = step % config.eval_interval == 0 or step == config.max_iters  # (and evaluates it first)
                interval_steps += 1
                progress.update(1)

                if step % config.log_interval == 0 or step == config.max_iters:
                    train_loss = interval_loss.item() / interval_steps  # .item() waits for the GPU, so time after it
                    seconds_per_step = (time.time() - interval_start) / interval_steps
                    record = {"step": step, "loss": round(train_loss, 5), "lr": lr,
                              "ms_per_step": round(1000 * seconds_per_step, 2),
                              "tokens_per_sec": round(tokens_per_step / seconds_per_step)}
                    line = (f"step {step:5d} | loss {train_loss:.4f} | lr {lr:.2e} | {1000 * seconds_per_step:7.1f} "
                            f"ms/step | {tokens_per_step / seconds_per_step:9,.0f} tok/s")
                    if peak_flops:
                        record["mfu"] = flops_per_token(raw_model, config) * tokens_per_step / seconds_per_step / \
                            (peak_flops * world_size)
                        line += f" | MFU {100 * record['mfu']:.1f}%"
                    if master:
                        progress.write(line)
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
                    interval_loss.zero_()
                    interval_steps, interval_start = 0, time.time()

            paused = time.time()  # evaluation and samples are not training time: the interval's clock skips them
            if eval_due:
                val_loss = evaluate(eval_model, val_tokens, config, device, autocast, step == config.max_iters, rank,
                                    world_size)
                if val_loss < best_val_loss:
                    best_val_loss, evals_without_improvement = val_loss, 0
                else:
                    evals_without_improvement += 1
                stop = config.patience > 0 and evals_without_improvement >= config.patience
                if stop and config.eval_iters > 0 and step != config.max_iters:  # the last evaluation is whole
                    val_loss = evaluate(eval_model, val_tokens, config, device, autocast, True, rank, world_size)
                    best_val_loss = min(best_val_loss, val_loss)
                if master:
                    record = {"step": step, "val_loss": round(val_loss, 5),
                              "val_perplexity": round(math.exp(val_loss), 3),
                              "elapsed_s": round(time.time() - started, 2)}
                    progress.write(f"step {step:5d} | val loss {val_loss:.4f} | perplexity {math.exp(val_loss):.2f}"
                                   f" | {time.time() - started:.1f} s")
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    save_checkpoint(checkpoint_path, raw_model, optimizer, scaler, config, meta, data_dir, step,
                                    best_val_loss, evals_without_improvement, rng_states(batch_generator))
                eval_due = False
                if stop and master:
                    progress.write(f"early stop: no better val loss in {config.patience} evaluations "
                                   f"(best {best_val_loss:.4f})")

            if master and tokenizer and config.sample_interval and step % config.sample_interval == 0:
                progress.write(generate_text(raw_model, tokenizer, config, device, autocast, max_new_tokens=200)[0])
            interval_start += time.time() - paused
    except KeyboardInterrupt:  # Ctrl-C: keep the work done so far; the step in flight is replayed on resume
        if master:
            optimizer.zero_grad(set_to_none=True)
            save_checkpoint(checkpoint_path, raw_model, optimizer, scaler, config, meta, data_dir, step,
                            best_val_loss, evals_without_improvement, resume_rng, eval_due)
            print(f"\ninterrupted at step {step}: saved {checkpoint_path}; continue with --init_from resume")
        stop = interrupted = True
    progress.close()

    if master:
        log_file.close()
        plot_losses(out_dir / "log.jsonl", out_dir / "loss.png")
        if tokenizer:
            print("sample:\n" + generate_text(raw_model, tokenizer, config, device, autocast,
                                              max_new_tokens=min(300, config.max_new_tokens))[0])
        best = f" | best val loss {best_val_loss:.4f}" if best_val_loss < float("inf") else ""  # none before one
        print(f"{'stopped' if interrupted else 'done'}: step {step}{best} | {time.time() - started:.1f} s | "
              f"checkpoint {checkpoint_path} (the weights of step {step})")
    if ddp:
        torch.distributed.destroy_process_group()
    return {"step": step, "best_val_loss": best_val_loss, "seconds": time.time() - started}


def open_log(path, resumed_step=None):
    """log.jsonl, open for appending. A new run (resumed_step None) starts a new log. A resumed run first drops the
    records of steps after its checkpoint, and a line cut short: a crash can log steps that no checkpoint saved, and
    those steps are about to be trained again (a Ctrl-C saves first, so it leaves nothing to drop)."""
    if resumed_step is None:
        return open(path, "w")
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= resumed_step:
            kept.append(line + "\n")
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(kept), encoding="utf-8")
    os.replace(temporary, path)
    return open(path, "a")


def plot_losses(log_path, picture_path):
    """Training and validation loss against steps, from log.jsonl (matplotlib is only needed here)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping loss.png")
        return
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    train_points = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val_points = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    figure, axes = plt.subplots(figsize=(7, 4))
    for points, label in ((train_points, "train (mean over log interval)"), (val_points, "validation")):
        if points:
            axes.plot(*zip(*points), marker="." if label == "validation" else None, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy loss (nats/token)")
    axes.legend()
    axes.grid(alpha=0.3)
    temporary = Path(picture_path).with_name(Path(picture_path).name + ".tmp")
    figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    os.replace(temporary, picture_path)


# ----------------------------------------------------------------------------------------------------------------------
# Sampling: text in, token ids through the model, text out, with the tokenizer named in meta.json.

# GPT-2's pre-tokenizer split pattern (Radford et al. 2019): contractions, letters, digits, other symbols, spaces.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def gpt2_encoding():
    """tiktoken's GPT-2 encoding: from local encoder.json / vocab.bpe under NANOVERSE_DATA/gpt2 when present."""
    import tiktoken

    local = Path(os.environ.get("NANOVERSE_DATA", "/nonexistent")) / "gpt2"
    if (local / "encoder.json").is_file() and (local / "vocab.bpe").is_file():
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(local / "vocab.bpe"),
                                                encoder_json_file=str(local / "encoder.json"))
        return tiktoken.Encoding(name="gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={"<|endoftext|>": 50256})
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as error:
        raise SystemExit(f"cannot load GPT-2's tokenizer ({type(error).__name__}; no network?): set NANOVERSE_DATA "
                         f"to a folder holding gpt2/encoder.json and gpt2/vocab.bpe")


def load_tokenizer(meta, data_dir):
    """(encode, decode) for the tokenizer that made the token files: char, gpt2 or a bpe.py model."""
    kind = meta.get("tokenizer")
    if kind == "char":
        itos = meta["itos"]
        stoi = {character: i for i, character in enumerate(itos)}

        def encode(text):
            unknown = sorted(set(text) - stoi.keys())
            if unknown:
                raise SystemExit(f"the prompt has characters the model never saw ({''.join(unknown[:10])!r}): "
                                 f"use only characters of the training text")
            return [stoi[character] for character in text]

        return encode, lambda ids: "".join(itos[i] for i in ids)
    if kind == "gpt2":
        encoding = gpt2_encoding()
        return (lambda text: encoding.encode(text, allowed_special="all")), encoding.decode
    if kind == "bpe":
        if "__file__" in globals() and str(Path(__file__).resolve().parent) not in sys.path:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
        try:
            from bpe import Tokenizer
        except ImportError:
            raise SystemExit("this dataset uses a bpe.py tokenizer: put bpe.py beside this script")
        model_path = Path(data_dir) / meta.get("bpe_model", "bpe.model")
        if not model_path.is_file():
            raise SystemExit(f"the BPE model {model_path} is missing: run prepare_data.py again for this dataset")
        tokenizer = Tokenizer.load(str(model_path))
        return (lambda text: tokenizer.encode(text, allowed_special="all")), tokenizer.decode
    raise SystemExit(f"meta.json names an unknown tokenizer {kind!r} (expected char, gpt2 or bpe)")


def generate_text(model, tokenizer, config, device, autocast, max_new_tokens=None, num_samples=1):
    """num_samples continuations of config.start, generated side by side as one batch."""
    encode, decode = tokenizer
    prompt = config.start
    if prompt.startswith("FILE:"):
        try:
            prompt = Path(prompt[5:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise SystemExit(f"cannot read the prompt file {prompt[5:]} ({type(error).__name__}): give a UTF-8 text "
                             f"file after FILE:")
    ids = encode(prompt)
    if not ids:
        raise SystemExit("--start is empty: give some text to continue (the default is a newline)")
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(config.seed)  # its own generator: training RNG untouched
    was_training = model.training
    model.eval()
    with autocast:
        out = model.generate(idx, max_new_tokens or config.max_new_tokens, temperature=config.temperature,
                             top_k=config.top_k, top_p=config.top_p, repetition_penalty=config.repetition_penalty,
                             generator=generator)
    model.train(was_training)
    return [decode(row.tolist()) for row in out]


def sample(config):
    device = pick_device(config.device)
    checkpoint = load_checkpoint(Path(config.out_dir) / "ckpt.pt")
    model_config = Config(**{name: value for name, value in checkpoint["config"].items()
                             if name in {f.name for f in dataclasses.fields(Config)}})
    model_config.dropout, model_config.attention = 0.0, config.attention
    model = build_model(model_config)
    model.load_state_dict(checkpoint["model"])
    model.to(device)
    dtype = pick_dtype(config.dtype, device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    tokenizer = load_tokenizer(checkpoint["meta"], checkpoint["data_dir"])
    texts = generate_text(model, tokenizer, config, device, autocast, num_samples=config.num_samples)
    for text in texts:
        print(text)
        print("-" * 80)
    return texts


# ----------------------------------------------------------------------------------------------------------------------
# Command line: one flag per Config field, with the field's comment as its help.


def check_run_config(config):
    """Name a bad training or sampling setting in one sentence (the model's shape is checked by GPT itself)."""
    problems = []
    if config.init_from not in ("scratch", "resume"):
        problems.append(f"--init_from must be scratch or resume, not {config.init_from!r}")
    if config.dtype not in ("auto", "float32", "bfloat16", "float16"):
        problems.append(f"--dtype must be auto, float32, bfloat16 or float16, not {config.dtype!r}")
    for name in ("max_iters", "batch_size", "grad_accum_steps", "eval_interval", "log_interval", "num_samples"):
        if getattr(config, name) < 1:
            problems.append(f"--{name} must be at least 1")
    for field in dataclasses.fields(Config):
        if field.type is float and not math.isfinite(getattr(config, field.name)):
            problems.append(f"--{field.name} must be a number, not {getattr(config, field.name)}")
    for name in ("warmup_iters", "lr_decay_iters", "eval_iters", "sample_interval", "patience", "max_new_tokens",
                 "top_k", "learning_rate", "min_lr", "weight_decay", "grad_clip", "temperature"):
        if getattr(config, name) < 0:
            problems.append(f"--{name} cannot be negative")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(config, name) < 1:
            problems.append(f"--{name} must be at least 0 and below 1")
    if not 0 < config.top_p <= 1:
        problems.append("--top_p must be above 0 and at most 1")
    if config.repetition_penalty <= 0:
        problems.append("--repetition_penalty must be above 0 (1 is off)")
    if problems:
        raise SystemExit("; ".join(problems))


def field_help():
    """The comment after each Config field (none when the source is unavailable, e.g. in some notebooks)."""
    try:
        source = inspect.getsource(Config)
    except (OSError, TypeError):
        return {}
    return dict(re.findall(r"^\s+(\w+): [^=]+=.*?  # (.*)$", source, flags=re.M))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # a misspelled flag is an error, never a guess
    helps = field_help()
    for field in dataclasses.fields(Config):
        default = "auto" if field.default is None else repr(field.default)  # None: chosen for the device
        help_text = f"{helps.get(field.name, '')} (default: {default})"
        if field.type is bool:
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(f"--{field.name}", type=field.type, default=argparse.SUPPRESS, help=help_text)
    args, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    # A notebook kernel passes "-f kernel.json"; ignore exactly that, and name anything else.
    if "-f" in unknown and unknown.index("-f") + 1 < len(unknown):
        del unknown[unknown.index("-f"):unknown.index("-f") + 2]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (see --help for the options)")
    explicit = vars(args)
    config = Config()
    preset = explicit.get("preset", "")
    if preset:
        if preset not in PRESETS:
            parser.error(f"--preset must be one of {', '.join(PRESETS)}, not {preset!r}")
        for name, value in PRESETS[preset].items():
            setattr(config, name, value)
    checkpoint_path = Path(explicit.get("out_dir", Config.out_dir)) / "ckpt.pt"
    if explicit.get("init_from") == "resume" and checkpoint_path.is_file():  # a resumed run keeps its own settings
        saved = load_checkpoint(checkpoint_path)["config"]
        for name in RESUMED_SETTINGS:
            setattr(config, name, saved.get(name, getattr(config, name)))
    for name, value in explicit.items():  # flags given on the command line win over the preset and the checkpoint
        setattr(config, name, value)
    if config.init_from == "resume" and not {"dataset", "data_dir"} & explicit.keys():
        config.dataset = ""  # no data named: resume on the data the checkpoint was trained on
    return config


def main(argv=None):
    config = parse_args(argv)
    check_run_config(config)
    return sample(config) if config.sample else train(config)


# %% Run
if __name__ == "__main__":
    main()
