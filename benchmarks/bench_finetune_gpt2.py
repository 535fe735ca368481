"""finetune_gpt2.py vs Hugging Face transformers' GPT2LMHeadModel, side by side on the same CPU and the same weights.

GPT-2 small's shape (124M parameters, random weights saved once and loaded by both), batch 4 x 128 tokens:
  - one training step (forward, loss, backward, AdamW update) in float32 (and with bfloat16 autocast: --bf16); ours
    with the two settings finetune_gpt2.py makes when it trains on a CPU (fused AdamW, keep_freed_memory), and
    transformers plain, with fused AdamW, and with both settings, to show what the settings alone are worth;
  - greedy generation of 128 new tokens after a 16-token prompt (batch 1, KV cache), ours as its generate mode runs
    on a CPU (use_decoding_layout: the weights' memory order, and the float16 GreedyScreen if it times faster);
  - the floor under float32 generation: per token, only one matrix-vector product per weight matrix (each weight read
    once, the memory-bandwidth bound of any decoder that reads every weight in float32), with the matrices in four
    memory orders (see floor_worker). The screen reads the output layer in float16, so ours can pass this floor.
Both sides must produce the same outputs: the same losses step after step (so the same updates) and the same tokens.
Each measurement runs in its own process, so its peak memory (maximum resident set size) is its own.

Run (the CPU is shared: take the lock):
    flock /tmp/nanoverse.cpu.lock python benchmarks/bench_finetune_gpt2.py            # ~3.5 min on 2 cores
    python benchmarks/bench_finetune_gpt2.py --steps 5 --new_tokens 256 --device cuda  # on a GPU machine
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH, BLOCK, PROMPT = 4, 128, 16


def load(side, folder, device):
    if side == "ours":
        import finetune_gpt2 as ft

        return ft.load_hf_folder(folder).to(device)
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="sdpa").to(device)


def adamw(model, fused):
    """The same AdamW for both sides: weight decay on matrices only, lr 1e-4."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-4, fused=fused)


def train_worker(side, folder, dtype, steps, device, fused, keep_memory):
    if keep_memory and device.type == "cpu":  # what finetune_gpt2.py does when it trains on a CPU
        import finetune_gpt2 as ft

        assert ft.keep_freed_memory(), "glibc's mallopt is not available here"
    model = load(side, folder, device).train()
    if side == "ours":
        import finetune_gpt2 as ft

        optimizer = ft.make_optimizer(model, SimpleNamespace(weight_decay=0.01, learning_rate=1e-4), device)
    else:  # plain torch.optim.AdamW (a per-tensor loop on CPU), or with --fused the fused kernel that recent
        # transformers' Trainer picks by default ("adamw_torch_fused")
        optimizer = adamw(model, fused)
    windows = torch.randint(0, 50257, (steps + 1, BATCH, BLOCK + 1), generator=torch.Generator().manual_seed(0))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16" else torch.autocast(
        device.type, enabled=False)
    losses, seconds = [], []
    for window in windows.to(device):
        x = window[:, :-1]
        start = time.perf_counter()
        with autocast:
            if side == "ours":  # transformers scores 127 of the 128 positions (it shifts the labels inside): the same
                y = window[:, 1:].clone()
                y[:, -1] = -1
                loss = model(x, y)[1]
            else:
                loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    best = min(seconds[1:])  # the first step pays for allocations and warm-up
    return {"tokens_per_sec": BATCH * BLOCK / best, "ms": best * 1e3, "losses": losses}


@torch.no_grad()
def generate_worker(side, folder, new_tokens, device):
    model = load(side, folder, device).eval()
    if side == "ours" and device.type == "cpu":  # what finetune_gpt2.py --mode generate does on a CPU
        import finetune_gpt2 as ft

        ft.use_decoding_layout(model)
    prompt = torch.randint(0, 50257, (1, PROMPT), generator=torch.Generator().manual_seed(1)).to(device)

    def run(n):
        if side == "ours":
            import finetune_gpt2 as ft

            return ft.generate(model, prompt, n, temperature=0.0)
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False,
                              pad_token_id=50256, eos_token_id=None)

    run(8)  # warm-up
    seconds = float("inf")
    for _ in range(3):  # the best of three, as training takes its fastest step: the host is shared
        start = time.perf_counter()
        tokens = run(new_tokens)
        seconds = min(seconds, time.perf_counter() - start)
    return {"tokens_per_sec": new_tokens / seconds, "ms": seconds * 1e3 / new_tokens, "tokens": tokens[0].tolist(),
            "screen": hasattr(model, "greedy_screen")}


@torch.no_grad()
def floor_worker(folder, new_tokens, device, task):
    """The least work one decoded token needs at batch 1: one matrix-vector product per weight matrix (four per block,
    plus the 50257 x 768 output layer), nothing else. Every weight is read from memory once per token, so this is the
    memory-bandwidth floor of any float32 decoder on these weights. The task names which matrices are stored (in, out)
    instead of nn.Linear's (out, in): none ("floor"), the output layer ("floor-transposed"), all of them
    ("floor-all-transposed"), or those that finetune_gpt2.py's use_decoding_layout stores so, the ones with out >= in
    ("floor-decoding-layout"). The same sums in every case, in another memory order."""
    import finetune_gpt2 as ft

    model = ft.load_hf_folder(folder).to(device)
    if task == "floor-decoding-layout":
        ft.use_decoding_layout(model)

    def stored(name, weight):
        if task == "floor-all-transposed" or (task == "floor-transposed" and name == "lm_head"):
            return weight.t().contiguous().t()  # same shape, stored (in, out)
        return weight

    matrices = [stored(name, module.weight) for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and name != "lm_head"]
    head = stored("lm_head", model.lm_head.weight)
    inputs = {n: torch.randn(1, n, device=device) for w in matrices for n in w.shape}

    def one_token():
        for weight in matrices:
            torch.nn.functional.linear(inputs[weight.shape[1]], weight)
        return torch.nn.functional.linear(inputs[head.shape[1]], head).argmax()

    for _ in range(3):
        one_token()
    seconds = float("inf")
    for _ in range(3):  # the best of three, as for generation
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(new_tokens):
            one_token()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = min(seconds, time.perf_counter() - start)
    return {"tokens_per_sec": new_tokens / seconds, "ms": seconds * 1e3 / new_tokens}


@torch.no_grad()
def layout_worker(folder, device):
    """Milliseconds for one matrix-vector product, per kind of weight matrix, stored (out, in) as nn.Linear keeps it
    and (in, out): the twelve matrices of a kind take turns (the output layer is one), so that they come from memory
    rather than from cache, as they do when a model decodes."""
    import finetune_gpt2 as ft

    model = ft.load_hf_folder(folder).to(device)
    kinds = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):  # "transformer.h.3.mlp.c_fc" -> "mlp.c_fc"
            kinds.setdefault(name.split(".", 3)[-1], []).append(module.weight)
    timings = {}
    for kind, weights in kinds.items():
        x = torch.randn(1, weights[0].shape[1], device=device)
        rounds = max(3, 48 // len(weights))
        row = {}
        for order, stored in (("(out, in)", weights), ("(in, out)", [w.t().contiguous().t() for w in weights])):
            for weight in stored:  # warm-up
                torch.nn.functional.linear(x, weight)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(rounds):
                for weight in stored:
                    torch.nn.functional.linear(x, weight)
            if device.type == "cuda":
                torch.cuda.synchronize()
            row[order] = (time.perf_counter() - start) * 1e3 / (rounds * len(stored))
        timings[f"{kind} {tuple(weights[0].shape)}"] = row
    return {"layouts": timings}


def worker(args):
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.task == "generate":
        result = generate_worker(args.side, args.folder, args.new_tokens, device)
    elif args.task.startswith("floor"):
        result = floor_worker(args.folder, args.new_tokens, device, args.task)
    elif args.task == "layouts":
        result = layout_worker(args.folder, device)
    else:
        result = train_worker(args.side, args.folder, args.task.split("-")[1], args.steps, device, args.fused,
                              args.side == "ours" or args.keep_memory)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps(result | {"peak_mib": peak}))


def matmul_flops(device):
    """The machine's practical float32 peak: a large square matrix product, best of five."""
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps after one warm-up step")
    parser.add_argument("--new_tokens", type=int, default=128, help="tokens generated greedily")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true",
                        help="also time training under bfloat16 autocast (slow on CPUs without native bf16 matmul)")
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "TASK"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--fused", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep_memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.side, args.task = args.worker
        return worker(args)

    import transformers

    transformers.logging.set_verbosity_error()
    folder = Path(tempfile.mkdtemp(prefix="nanoverse-bench-gpt2-"))
    torch.manual_seed(0)
    config = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # GPT-2 small, 124M
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    peak_flops = matmul_flops(torch.device(args.device))
    n_params = 124_439_808  # GPT-2 small with its 50257-token vocabulary (wte counted once, as it is tied)
    # Training FLOPs per token: 6 per weight used in a matrix product (forward 2, backward 4; the position table is a
    # lookup), plus 12 * n_layer * n_embd * T for attention's scores and weighted sums (the count of Chowdhery et al.
    # 2022, PaLM, appendix B).
    flops_per_token = 6 * (n_params - 1024 * 768) + 12 * 12 * 768 * BLOCK

    tasks = [("train-float32", "transformers", False), ("train-float32", "transformers + fused AdamW", True),
             ("train-float32", "transformers + fused AdamW + kept memory", True),
             ("train-float32", "finetune_gpt2", False), ("generate", "transformers", False),
             ("generate", "finetune_gpt2", False), ("floor", "matrix-vector products only", False),
             ("floor-transposed", "matrix-vector products only", False),
             ("floor-all-transposed", "matrix-vector products only", False),
             ("floor-decoding-layout", "matrix-vector products only", False)]
    if args.bf16:
        tasks[3:3] = [("train-bfloat16", "transformers", False), ("train-bfloat16", "finetune_gpt2", False)]
    def run_worker(side, task, fused=False, keep_memory=False):
        command = [sys.executable, __file__, "--worker", side, task, "--folder", str(folder), "--steps",
                   str(args.steps), "--new_tokens", str(args.new_tokens), "--device", args.device] + \
            (["--fused"] if fused else []) + (["--keep_memory"] if keep_memory else [])
        output = subprocess.run(command, capture_output=True, text=True, check=True,
                                env=os.environ | {"TOKENIZERS_PARALLELISM": "false"}).stdout
        return json.loads(output.strip().splitlines()[-1])

    results = {}
    for task, side, fused in tasks:
        results[task, side] = run_worker("ours" if side == "finetune_gpt2" else "hf", task, fused,
                                         keep_memory=side.endswith("kept memory"))
        print(f"done: {task:15s} {side:27s} {results[task, side]['tokens_per_sec']:8.1f} tok/s", flush=True)
    layouts = run_worker("ours", "layouts")["layouts"]

    print(f"\nGPT-2 small (124M), batch {BATCH} x {BLOCK} tokens for training, {args.new_tokens} greedy tokens after a "
          f"{PROMPT}-token prompt for generation; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.device}; measured float32 matmul peak {peak_flops / 1e9:.0f} GFLOP/s\n")
    print("| task | implementation | tokens/s | ms per step or token | vs transformers | peak memory (MiB) "
          "| share of matmul peak | same outputs |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for (task, side), result in results.items():
        baseline = results.get((task if not task.startswith("floor") else "generate", "transformers"))
        speedup = f"{result['tokens_per_sec'] / baseline['tokens_per_sec']:.2f}x" if baseline else "-"
        share = f"{flops_per_token * result['tokens_per_sec'] / peak_flops:.0%}" if task.startswith("train") else "-"
        same = "-"
        if baseline and side != "transformers":
            if task.startswith("floor"):
                same = "-"
            elif task == "generate":
                same = "yes" if result["tokens"] == baseline["tokens"] else "NO"
                same += " (float16 screen)" if result["screen"] else " (no screen: float32 was faster here)"
            else:
                tolerance = 1e-3 if task == "train-float32" else 5e-2
                gap = max(abs(a - b) for a, b in zip(result["losses"], baseline["losses"]))
                same = f"{'yes' if gap <= tolerance else 'NO'} (losses within {gap:.1e})"
        print(f"| {task} | {side} | {result['tokens_per_sec']:.1f} | {result['ms']:.1f} | {speedup} | "
              f"{result['peak_mib']:.0f} | {share} | {same} |")

    print("\nOne matrix-vector product (ms per product), by the memory order of the matrix (layout_worker):\n")
    print("| matrix (out, in) | stored (out, in), ms | stored (in, out), ms | faster |")
    print("| --- | ---: | ---: | --- |")
    for kind, row in layouts.items():
        print(f"| {kind} | {row['(out, in)']:.3f} | {row['(in, out)']:.3f} | {min(row, key=row.get)} |")
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


if __name__ == "__main__":
    main()
