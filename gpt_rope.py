"""gpt.py with rotary position embeddings (RoPE) in place of its position table.

The model is GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"): the decoder of
Vaswani et al. 2017 ("Attention Is All You Need") with GPT-2's parameter names. Token embeddings (positions below),
causal multi-head self-attention, an MLP, pre-LayerNorm residual blocks and a tied output layer; then the data, the
training loop (on a CPU, or on many GPUs through torchrun) and sampling with a KV cache; the plumbing comes last.
What differs from gpt.py (`diff -u gpt.py gpt_rope.py`; Su et al. 2021, "RoFormer", sec. 3.2): no position table
(wpe); each attention layer turns every query and key by angles proportional to its position (rotary_tables,
rotate_half), so the score of query m and key n depends only on m - n; --rope_theta sets the base of the angles.

Run:
    python prepare_data.py shakespeare_char && python gpt_rope.py     # CPU: 2500 steps, val loss ~1.79, < 1 min
    python gpt_rope.py --sample --start "ROMEO:" --num_samples 3        # sample from out-gpt-rope/ckpt.pt
    python gpt_rope.py --preset shakespeare --out_dir out-rope --batch_size 64 --learning_rate 1e-3 --max_iters 5000 \
        --lr_decay_iters 5000 --min_lr 1e-4 --warmup_iters 100   # GPU: nanoGPT's shakespeare_char recipe
    torchrun --standalone --nproc_per_node=8 gpt_rope.py --preset gpt2 --dataset shakespeare --out_dir out-gpt2-rope
    Colab: upload gpt_rope.py and prepare_data.py, then  !python prepare_data.py shakespeare_char && python gpt_rope.py
"""

import argparse
import dataclasses
import difflib
import hashlib
import inspect
import json
import math
import os
import re
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm


# %% Configuration: every field is a command-line flag, its comment the flag's help
@dataclasses.dataclass
class Config:
    # --- data and outputs
    dataset: str = "shakespeare_char"  # token folder data/<dataset> written by `python prepare_data.py <dataset>`
    data_dir: str = ""  # read train.bin, val.bin and meta.json from here instead of data/<dataset>
    out_dir: str = "out-gpt-rope"  # checkpoint (ckpt.pt), log.jsonl and loss.png go here
    # --- model
    preset: str = ""  # a model shape from PRESETS; flags typed after it win
    n_layer: int = 1  # transformer blocks (1: in a one-minute CPU run depth costs more time than it returns)
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
    init_from: str = "scratch"  # scratch (a new model) or resume (continue out_dir/ckpt.pt with its settings)
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
    dtype: str = "auto"  # autocast precision; auto: bfloat16 on CUDA (float16 without bf16), float32 on CPU and MPS
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


# Model shapes: "cpu" is nanoGPT's 0.8M-parameter laptop model, "shakespeare" its 6-block character model, "gpt2" is
# GPT-2 small (124M with the 50257-token vocabulary) and "gpt-small" a deeper ~150M variant of it (16 blocks). A preset
# sets only these fields; the training flags keep their defaults unless you type them.
PRESETS = {
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    "shakespeare": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt-small": dict(n_layer=16, n_head=12, n_embd=768, block_size=1024),
}


# %% The model, smallest piece first
# Parameter names follow GPT-2's own checkpoint (wte, h.N.ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc,
# mlp.c_proj, ln_f); GPT-2's own weights do not fit, as they need its position table.


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


class GPT(nn.Module):
    """Embeddings, n_layer blocks, a final LayerNorm and the tied output layer that scores every next token."""

    def __init__(self, config):
        super().__init__()
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
        # GPT-2's initialisation: matrices normal(0, 0.02), biases zero, LayerNorm gains one. The layers that write into
        # the residual stream (two per block) get 0.02 / sqrt(2 * n_layer), so that the stream's variance does not grow
        # with depth (Radford et al. 2019, sec. 2.3).
        for name, param in self.named_parameters():
            if param.dim() == 2:
                std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(param, mean=0.0, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(param)

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


# %% Data: random windows of the token files to train on, consecutive windows to measure


def get_batch(tokens, batch_size, block_size, rng, device):
    """batch_size random windows: x is block_size tokens, y the same window shifted one token to the right."""
    starts = rng.integers(len(tokens) - block_size, size=batch_size)
    windows = torch.from_numpy(np.stack([tokens[i:i + block_size + 1].astype(np.int64) for i in starts]))
    x, y = windows[:, :-1], windows[:, 1:]
    if device.type == "cuda":  # pinned memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


@torch.no_grad()
def evaluate(model, tokens, config, device, autocast, whole_split=True, rank=0, world_size=1):
    """Mean loss over the validation split in consecutive block_size windows (a tail too short for one is skipped):
    positions see 0 .. block_size - 1 tokens of context, the same mix as in training. A quick look during training
    (whole_split=False, eval_iters > 0) takes a fixed sample of windows, so that evaluations compare like with like."""
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


# %% Training: the learning-rate schedule, AdamW, and the loop


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
    """AdamW (Loshchilov & Hutter 2019) with weight decay on the matrices (and the embedding) only: decay pulls
    weights toward zero, which regularises matrices; for biases and LayerNorm gains (1-D) it only fights their job."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # The fused kernel updates every tensor in one pass instead of a dozen small ones per tensor.
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2),
                             fused=device.type in ("cuda", "cpu"))


def train(config, on_eval=None):
    """Train a GPT as config says; returns the last step, the best and the last validation loss, and the seconds.
    on_eval(step, val_loss), if given, runs after every evaluation (tune.py prunes with it): an exception it raises
    ends the run, after that evaluation's checkpoint. Ctrl-C saves the last finished step and is raised again."""
    check_config(config)
    checkpoint = load_checkpoint(Path(config.out_dir) / "ckpt.pt") if config.init_from == "resume" else None
    config, train_tokens, val_tokens, meta = load_data(config, checkpoint)  # the shape of a resumed model, data_dir
    rank, world_size, device, autocast, dtype = setup(config)  # under torchrun every process runs all that follows
    master, out_dir = rank == 0, Path(config.out_dir)  # only the first process prints, logs and saves

    torch.manual_seed(config.seed)  # the same initial weights in every process
    model = GPT(config).to(device)
    optimizer = make_optimizer(model, config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # fp16 gradients underflow without it
    step, best_val_loss, bad_evals, val_loss = 0, math.inf, 0, None
    if checkpoint is not None:  # continue: the weights, AdamW's moments and the counters
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        step, best_val_loss, bad_evals = checkpoint["step"], checkpoint["best_val_loss"], checkpoint["bad_evals"]
    raw_model = model  # the plain module: checkpoints hold its names, and sampling uses it
    # A one-off compile for faster steps (on by default on CUDA; on a small CPU model it did not pay back).
    eval_model = model = torch.compile(model) if config.compile or config.compile is None and device.type == "cuda" \
        else model
    if world_size > 1:  # DistributedDataParallel averages the gradients of all processes during backward
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    tokens_per_step = config.batch_size * config.block_size * config.grad_accum_steps * world_size
    log, tokenizer = open_outputs(out_dir, checkpoint is not None, meta, config.data_dir) if master else (None, None)
    if master:
        print(f"{raw_model.num_parameters() / 1e6:.2f}M parameters | {tokens_per_step:,} tokens per step | {device} "
              f"{str(dtype)[6:]} | {world_size} process(es) | from step {step} | {config.data_dir}")

    def report(record):  # one line on screen, and the same as JSON in log.jsonl
        if master:
            progress.write(" | ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                                      for key, value in record.items()))
            print(json.dumps(record), file=log, flush=True)

    progress = tqdm(total=config.max_iters, initial=step, disable=not master, dynamic_ncols=True, leave=False)
    started = interval_start = time.time()
    interval_loss, interval_steps = torch.zeros((), device=device), 0
    try:
        while step < config.max_iters:
            lr = learning_rate_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # Batches and dropout follow from (seed, process, step) alone: each process draws its own, a resumed run
            # the same as an unbroken one, with no random state to save.
            rng = np.random.default_rng([config.seed, rank, step])
            torch.manual_seed(int(rng.integers(2**62)))
            for micro_step in range(config.grad_accum_steps):
                x, y = get_batch(train_tokens, config.batch_size, config.block_size, rng, device)
                if world_size > 1:  # average gradients across processes once, after the last micro-batch
                    model.require_backward_grad_sync = micro_step == config.grad_accum_steps - 1
                with autocast:
                    _, loss, _ = model(x, y)
                loss = loss / config.grad_accum_steps  # the step's gradient is the mean over its micro-batches
                scaler.scale(loss).backward()
                interval_loss += loss.detach()
            if config.grad_clip > 0:  # one oversized gradient should not wreck the weights
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            interval_steps += 1
            progress.update()

            if step % config.log_interval == 0 or step == config.max_iters:
                train_loss = interval_loss.item() / interval_steps  # .item() waits for the GPU, so time after it
                seconds = (time.time() - interval_start) / interval_steps
                record = {"step": step, "loss": train_loss, "lr": lr, "ms_per_step": 1000 * seconds,
                          "tokens_per_sec": round(tokens_per_step / seconds)}
                if device.type == "cuda":  # model FLOPs utilisation: 6 per weight and token (Chowdhery et al. 2022,
                    # appendix B; attention's own left out), against an A100's 312 bf16 TFLOP/s as nanoGPT does
                    record["mfu"] = 6 * raw_model.num_parameters() * record["tokens_per_sec"] / world_size / 312e12
                report(record)
                interval_loss.zero_()
                interval_steps, interval_start = 0, time.time()

            paused = time.time()  # evaluations and samples are not training time: the interval's clock skips them
            if step % config.eval_interval == 0 or step == config.max_iters:
                val_loss = evaluate(eval_model, val_tokens, config, device, autocast, step == config.max_iters, rank,
                                    world_size)
                bad_evals = 0 if val_loss < best_val_loss else bad_evals + 1
                stop = config.patience > 0 and bad_evals >= config.patience  # early stopping
                if stop and step < config.max_iters and config.eval_iters > 0:  # the last evaluation is whole
                    val_loss = evaluate(eval_model, val_tokens, config, device, autocast, True, rank, world_size)
                best_val_loss = min(best_val_loss, val_loss)
                report({"step": step, "val_loss": val_loss, "val_perplexity": math.exp(val_loss),
                        "elapsed_s": time.time() - started, **({"early_stop": True} if stop else {})})
                if master:
                    save_checkpoint(out_dir / "ckpt.pt", raw_model, optimizer, scaler, config, meta, step,
                                    best_val_loss, bad_evals)
                if on_eval is not None:
                    on_eval(step, val_loss)
                if stop:
                    break
            if tokenizer and config.sample_interval and step % config.sample_interval == 0:
                progress.write(generate_text(raw_model, tokenizer, config, device, autocast, 200)[0])
            interval_start += time.time() - paused
    except KeyboardInterrupt:  # Ctrl-C: keep the last finished step, then stop as asked
        if master:
            save_checkpoint(out_dir / "ckpt.pt", raw_model, optimizer, scaler, config, meta, step, best_val_loss,
                            bad_evals)
            progress.write(f"interrupted: {out_dir / 'ckpt.pt'} holds step {step}; continue with --init_from resume")
        raise
    finally:
        progress.close()
        if log:
            log.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    if master:
        plot_losses(out_dir / "log.jsonl", out_dir / "loss.png")
        if tokenizer:
            print(generate_text(raw_model, tokenizer, config, device, autocast, min(300, config.max_new_tokens))[0])
        print(f"done: step {step} | best val loss {best_val_loss:.4f} | {time.time() - started:.1f} s | {out_dir} "
              f"(to go on: --init_from resume with a higher --max_iters; --lr_decay_iters {step} keeps min_lr)")
    return {"step": step, "best_val_loss": best_val_loss, "val_loss": val_loss, "seconds": time.time() - started}


# %% Sampling: text in, token ids through the model, text out


def generate_text(model, tokenizer, config, device, autocast, max_new_tokens, num_samples=1):
    """num_samples continuations of config.start (FILE:path reads the prompt from a file), generated as one batch."""
    encode, decode = tokenizer
    prompt = config.start
    try:
        ids = encode(Path(prompt[5:]).read_text(encoding="utf-8") if prompt.startswith("FILE:") else prompt)
    except (OSError, UnicodeDecodeError, KeyError) as error:  # KeyError: a character the model never saw
        raise SystemExit(f"error: --start {prompt[:30]!r} fails ({type(error).__name__}: {error}): give text of the "
                         f"training characters, or FILE: and a UTF-8 file")
    if not ids:
        raise SystemExit("error: --start is empty: give some text to continue (the default is a newline)")
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(config.seed)  # its own generator: training RNG untouched
    was_training = model.training
    model.eval()
    with autocast:
        out = model.generate(idx, max_new_tokens, temperature=config.temperature, top_k=config.top_k,
                             top_p=config.top_p, repetition_penalty=config.repetition_penalty, generator=generator)
    model.train(was_training)
    return [decode(row.tolist()) for row in out]


def sample(config):
    """Print and return num_samples continuations of --start by the model in out_dir/ckpt.pt."""
    check_config(dataclasses.replace(config, sample=True))
    _, _, device, autocast, _ = setup(config)
    checkpoint = load_checkpoint(Path(config.out_dir) / "ckpt.pt")
    model = GPT(Config(**{**checkpoint["config"], "dropout": 0.0, "attention": config.attention})).to(device)
    model.load_state_dict(checkpoint["model"])
    tokenizer = load_tokenizer(checkpoint["meta"], config.data_dir or checkpoint["data_dir"])
    texts = generate_text(model, tokenizer, config, device, autocast, config.max_new_tokens, config.num_samples)
    for text in texts:
        print(text, "-" * 80, sep="\n")
    return texts


# %% Plumbing: devices, checkpoints, token files, tokenizers, loss.png, the command line (skip on a first read)


def setup(config):
    """(rank, world_size, device, autocast, dtype). torchrun starts a process per GPU with RANK, WORLD_SIZE, LOCAL_RANK
    set. --dtype auto: bf16 autocast on CUDA (float32's range: no loss scaling), fp16 with a GradScaler on GPUs
    without bf16, float32 on CPU and MPS (bf16 autocast on an AVX2-only CPU is several times slower)."""
    ddp = "RANK" in os.environ
    name = config.device if not (ddp and torch.cuda.is_available() and config.device in ("auto", "cuda")) \
        else f"cuda:{os.environ['LOCAL_RANK']}"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    kind, _, index = name.partition(":")
    count = {"cpu": 1, "cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available())}.get(kind, 0)
    if not (index.isdigit() or index == "") or int(index or 0) >= count:
        raise SystemExit(f"error: --device {name!r}: there is no such device here; use auto, cpu, cuda, cuda:N or mps")
    device = torch.device(name)
    if ddp:  # NCCL connects GPU processes, gloo CPU processes
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype = getattr(torch, config.dtype if config.dtype != "auto" else "float32" if device.type != "cuda"
                    else "bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    rank, world_size = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if ddp else (0, 1)
    return rank, world_size, device, autocast, dtype


CHECKPOINT_FORMAT = "nanoverse-gpt-rope-v1"
# The fields that fix the model's weights: a resumed or sampled checkpoint always uses its own.
MODEL_SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "activation", "mlp_ratio",
                      "layer_norm_epsilon", "rope_theta")


def write_atomically(path, write):
    """write(file) into a new file beside path, then rename it to path: a crash or Ctrl-C never leaves half a file.
    mkstemp makes a fresh file with a unique name (never one a planted symlink points to); on failure it goes."""
    handle, temporary = tempfile.mkstemp(dir=Path(path).parent, prefix=Path(path).name + ".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_checkpoint(path, model, optimizer, scaler, config, meta, step, best_val_loss, bad_evals):
    """The plain module's weights, AdamW's moments, the counters and the tokenizer's fingerprint, written atomically."""
    checkpoint = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "scaler": scaler.state_dict(), "config": dataclasses.asdict(config), "meta": meta,
                  "data_dir": config.data_dir, "tokenizer_sha256": meta["tokenizer_sha256"], "step": step,
                  "best_val_loss": best_val_loss, "bad_evals": bad_evals}
    write_atomically(path, lambda file: torch.save(checkpoint, file))


def load_checkpoint(path):
    """A checkpoint of this script, read with weights_only: tensors and plain data, never code to run."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"error: no checkpoint at {path}: train first, or point --out_dir at a run")
    except Exception as error:
        raise SystemExit(f"error: {path} cannot be read as a checkpoint ({type(error).__name__}): is it cut short?")
    found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if found != CHECKPOINT_FORMAT:  # e.g. nanoverse-gpt-rope-v1: gpt_rope.py's
        raise SystemExit(f"error: {path} is a {found or 'foreign'} checkpoint, not {CHECKPOINT_FORMAT}: use its script")
    if "tokenizer_sha256" not in checkpoint:
        raise SystemExit(f"error: {path} was written by an older version of this script: train again")
    return checkpoint


def load_data(config, checkpoint=None):
    """(config with data_dir, vocab_size and a resumed model's shape filled in, train.bin and val.bin as memory maps:
    the OS pages tokens in on demand, so any size fits, meta.json). A resumed run must read ids of its tokenizer."""
    if checkpoint is not None:  # the weights fix the model's shape
        config = dataclasses.replace(config, **{name: checkpoint["config"][name] for name in MODEL_SHAPE_FIELDS})
    data_dir = Path(config.data_dir or Path("data") / config.dataset)
    hint = f"run `python prepare_data.py {config.dataset}` first" if not config.data_dir else "prepare it again"
    try:
        meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
        dtype, vocab_size, fingerprint = np.dtype(meta["dtype"]), meta["vocab_size"], meta["tokenizer_sha256"]
    except (OSError, ValueError, TypeError, KeyError) as error:  # missing, not JSON, or not prepare_data.py's
        raise SystemExit(f"error: {data_dir / 'meta.json'} is missing or not one that prepare_data.py writes "
                         f"({type(error).__name__}: {error}): {hint}")
    if checkpoint is not None and checkpoint["tokenizer_sha256"] != fingerprint:
        raise SystemExit(f"error: the ids in {data_dir} come from another tokenizer than the checkpoint's (their "
                         f"tokenizer_sha256 differ): resume with --data_dir {checkpoint['data_dir']}")
    splits, vocab_size = [], min(vocab_size, config.vocab_size or vocab_size)
    for path in (data_dir / "train.bin", data_dir / "val.bin"):
        size = path.stat().st_size if path.is_file() else -1
        if size < 0 or size % dtype.itemsize:
            raise SystemExit(f"error: {path} is missing or not a whole number of {dtype} tokens: {hint}")
        if size // dtype.itemsize <= config.block_size + 1:
            raise SystemExit(f"error: {path} has {size // dtype.itemsize} tokens, too few for --block_size "
                             f"{config.block_size}: use a smaller one, or more text")
        splits.append(np.memmap(path, dtype=dtype, mode="r"))
        if int(splits[-1].max()) >= vocab_size:  # one pass, or an IndexError deep inside the embedding
            raise SystemExit(f"error: {path} holds token id {int(splits[-1].max())}, past the vocabulary's "
                             f"{vocab_size} ids (meta.json or --vocab_size): {hint}")
    config = dataclasses.replace(config, data_dir=str(data_dir.resolve()), vocab_size=config.vocab_size or vocab_size)
    return config, splits[0], splits[1], meta


def open_outputs(out_dir, resumed, meta, data_dir):
    """log.jsonl (a resumed run appends) and the tokenizer for samples (None where it cannot load: they are a bonus)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "log.jsonl", "a" if resumed else "w", encoding="utf-8")
    try:
        return log, load_tokenizer(meta, data_dir)
    except SystemExit as error:
        print(f"no samples: {error}")
        return log, None


def load_tokenizer(meta, data_dir):
    """(encode, decode) of the tokenizer that made the ids: characters, GPT-2's, or the very bpe.py model file."""
    if meta["tokenizer"] == "char":
        stoi = {character: i for i, character in enumerate(meta["itos"])}
        return (lambda text: [stoi[character] for character in text]), lambda ids: "".join(meta["itos"][i] for i in ids)
    if meta["tokenizer"] == "gpt2":
        try:
            import tiktoken
            encoding = tiktoken.get_encoding("gpt2")
        except Exception as error:
            raise SystemExit(f"error: cannot load GPT-2's tokenizer ({type(error).__name__}): connect to the network "
                             f"once, or set TIKTOKEN_CACHE_DIR to a folder of tiktoken's cached files")
        return (lambda text: encoding.encode(text, allowed_special="all")), encoding.decode
    path = Path(data_dir) / meta.get("bpe_model", "bpe.model")
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != meta["tokenizer_sha256"]:
        raise SystemExit(f"error: {path} is {'missing' if not path.is_file() else 'another BPE model'}: the ids belong "
                         f"to the one with sha256 {meta['tokenizer_sha256'][:12]}...; point --data_dir at its folder")
    from bpe import Tokenizer  # bpe.py, beside this script
    tokenizer = Tokenizer.load(str(path))
    return (lambda text: tokenizer.encode(text, allowed_special="all")), tokenizer.decode


def plot_losses(log_path, picture_path):
    """Training and validation loss against steps, from log.jsonl (matplotlib is only needed here)."""
    from matplotlib.figure import Figure  # drawn straight into a file: no window, no pyplot

    records = [json.loads(line) for line in Path(log_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    for key, label in (("loss", "train (mean over a log interval)"), ("val_loss", "validation")):
        axes.plot(*zip(*[(r["step"], r[key]) for r in records if key in r]), marker=".", label=label)
    axes.set(xlabel="step", ylabel="cross-entropy loss (nats/token)")
    axes.legend()
    write_atomically(picture_path, lambda file: figure.savefig(file, format="png", dpi=100, bbox_inches="tight"))


# What the numbers must be, checked before any work starts; argparse's choices= checks the named options.
RULES = [(("n_layer", "n_head", "n_embd", "block_size", "mlp_ratio", "max_iters", "batch_size", "grad_accum_steps",
           "eval_interval", "log_interval", "num_samples"), lambda value: value >= 1, "must be at least 1"),
         (("vocab_size", "learning_rate", "min_lr", "warmup_iters", "lr_decay_iters", "weight_decay", "grad_clip",
           "eval_iters", "sample_interval", "patience", "max_new_tokens", "temperature", "top_k"),
          lambda value: value >= 0, "cannot be negative"),
         (("dropout", "beta1", "beta2"), lambda value: 0 <= value < 1, "must be at least 0 and below 1"),
         (("top_p",), lambda value: 0 < value <= 1, "must be above 0 and at most 1"),
         (("repetition_penalty",), lambda value: value > 0, "must be above 0 (1 is off)")]
CHOICES = {"preset": list(PRESETS), "attention": ["sdpa", "manual"], "activation": ["gelu", "relu"],
           "init_from": ["scratch", "resume"], "dtype": ["auto", "float32", "bfloat16", "float16"]}


def check_config(config):
    """Settings people get wrong, named with their fix (files are checked where they are opened, devices in setup)."""
    value = dataclasses.asdict(config)
    problems = [f"--{name} {phrase if math.isfinite(value[name]) else 'must be a number'}" for names, rule, phrase in
                RULES for name in names if not (math.isfinite(value[name]) and rule(value[name]))]
    if config.n_head >= 1 and config.n_embd % config.n_head:
        problems.append(f"--n_embd {config.n_embd} must be divisible by --n_head {config.n_head} (each head gets "
                        f"n_embd / n_head channels)")
    if config.n_head >= 1 and (config.n_embd // config.n_head) % 2 or not config.rope_theta > 1:  # turns in pairs
        problems.append(f"RoPE needs an even n_embd / n_head (now {config.n_embd} / {config.n_head}: change --n_embd "
                        f"or --n_head) and --rope_theta above 1 (now {config.rope_theta})")
    if not config.sample and config.init_from == "scratch" and (Path(config.out_dir) / "ckpt.pt").exists():
        problems.append(f"{config.out_dir} holds a run: continue it with --init_from resume, or pick another --out_dir")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))


def parse_args(argv=None):
    """(Config, the flags typed): one flag per Config field, its comment the help; a preset first, typed flags win."""
    if argv is None:  # in a notebook sys.argv holds the kernel's own arguments, not ours
        argv = [] if "ipykernel" in sys.modules else sys.argv[1:]
    try:  # the comment after each Config field (not in notebooks that cannot show the source)
        comments = dict(re.findall(r"^\s+(\w+): .*?  # (.*)$", inspect.getsource(Config), flags=re.M))
    except (OSError, TypeError):
        comments = {}
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # a misspelled flag is an error, never a guess
    for field in dataclasses.fields(Config):
        kind = ({"action": argparse.BooleanOptionalAction} if field.type is bool
                else {"type": field.type, "choices": CHOICES.get(field.name)})
        parser.add_argument(f"--{field.name}", default=argparse.SUPPRESS, help=f"{comments.get(field.name, '')} "
                            f"(default: {'auto' if field.default is None else repr(field.default)})", **kind)
    typed, unknown = parser.parse_known_args(argv)
    if unknown:
        close = difflib.get_close_matches(unknown[0].split("=")[0], [f"--{f.name}" for f in dataclasses.fields(Config)])
        parser.error(f"unrecognized arguments: {' '.join(unknown)}" + (f": did you mean {close[0]}?" if close else ""))
    typed = vars(typed)
    return Config(**{**PRESETS.get(typed.get("preset"), {}), **typed}), typed


def main(argv=None):
    config, typed = parse_args(argv)
    try:
        if config.init_from == "resume" and not config.sample:  # the run's own settings, unless typed again; how and
            # where to run come from the command line, and a dataset named replaces the run's data folder
            saved = load_checkpoint(Path(config.out_dir) / "ckpt.pt")["config"]
            run = {name: getattr(config, name) for name in ("init_from", "out_dir", "device", "dtype", "compile")}
            config = Config(**{**saved, **run, **({"data_dir": ""} if "dataset" in typed else {}), **typed})
        return sample(config) if config.sample else train(config)
    except KeyboardInterrupt:  # train() has said what it saved: no traceback
        raise SystemExit(130)


# %% Run
if __name__ == "__main__":
    main()
