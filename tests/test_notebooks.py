"""Every script is also a notebook: jupytext reads its `# %%` cells, and it runs top to bottom in a real IPython kernel.

The last cell of each script is the `if __name__ == "__main__":` guard alone. In a notebook that guard is true, so the
test replaces the cell by a tiny `main([...])` call (NOTEBOOK_ARGS) and runs the notebook with nbclient, offline, in a
fresh folder: what a teacher gets from `jupytext --to ipynb SCRIPT.py`.
"""

import json
import os

import pytest

from conftest import ROOT

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

MIRROR = os.environ.get("NANOVERSE_DATA", "")

# Code run before main() in the last cell (data the run needs), and main's arguments: a few seconds per script.
PREPARE_CHARS = 'import prepare_data\nprepare_data.main(["shakespeare_char", "--no-eda", "--samples", "0"])\n'
# A tiny random GPT-2 (GPT-2's vocabulary, one block of width 32) in a Hugging Face folder: fine-tuned on the shipped
# Tiny Shakespeare, the real loading, training, evaluation and saving code runs in seconds.
TINY_GPT2 = ('import torch, transformers\ntorch.manual_seed(0)\ntorch.set_num_threads(1)\n'
             'transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64))'
             '.save_pretrained("tiny-gpt2")\n')
NOTEBOOK_ARGS = {
    "bpe": ("", ["train", "--vocab_size", "300", "--out", "out/bpe", "--no-verbose"]),
    "prepare_data": ("", ["shakespeare_char", "--samples", "0", "--show_batches"]),
    "gpt": (PREPARE_CHARS, ["--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--block_size", "16",
                            "--batch_size", "4", "--max_iters", "3", "--eval_interval", "3", "--eval_iters", "1"]),
    "gpt_rope": (PREPARE_CHARS, ["--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--block_size", "16",
                                 "--batch_size", "4", "--max_iters", "3", "--eval_interval", "3", "--eval_iters", "1"]),
    "seq2seq_rnn": ("", ["--data_dir", os.path.join(MIRROR, "dakshina", "hi"), "--max_train_rows", "200",
                         "--max_dev_rows", "20", "--epochs", "1", "--hidden_size", "16", "--embedding_size", "8",
                         "--beam_size", "2", "--heatmaps", "1"]),
    "seq2seq_transformer": ("", ["--data_dir", os.path.join(MIRROR, "dakshina", "hi"), "--max_train_rows", "200",
                                 "--max_dev_rows", "20", "--epochs", "1", "--d_model", "16", "--d_ff", "32",
                                 "--beam_size", "2", "--heatmaps", "1"]),
    "finetune_gpt2": (TINY_GPT2, ["--init_from", "tiny-gpt2", "--max_steps", "2", "--block_size", "32", "--batch_size",
                                  "2", "--eval_batches", "1", "--bleu_samples", "2", "--max_new_tokens", "4",
                                  "--num_return_sequences", "1", "--log_interval", "1", "--save_hf", "hf"]),
    "tune": (PREPARE_CHARS, ["--trials", "1", "--block_size", "16", "--batch_size", "16", "--max_iters", "2",
                             "--eval_interval", "2"]),
    "embeddings_pca": ("", ["--input", os.path.join(MIRROR, "poetry_lyrics", "beatles.txt"), "--min_count", "2",
                            "--dim", "10", "--plot_words", "love,night,day,heart"]),
}
NEEDS_MIRROR = {"seq2seq_rnn", "seq2seq_transformer", "embeddings_pca"}

# The kernel gets the same guard as the tests: no connection leaves this machine.
NO_NETWORK = """
import socket, sys
sys.path.insert(0, {root!r})
_connect = socket.socket.connect
def _guarded(sock, address):
    if isinstance(address, tuple) and not str(address[0]).startswith(("127.", "localhost", "::1")):
        raise RuntimeError(f"notebooks must not use the network (tried {{address!r}})")
    return _connect(sock, address)
socket.socket.connect = _guarded
"""


def top_level_scripts():
    return sorted(path.stem for path in ROOT.glob("*.py"))


def test_every_script_has_a_notebook_run():
    assert set(top_level_scripts()) == set(NOTEBOOK_ARGS)


@pytest.mark.parametrize("name", sorted(NOTEBOOK_ARGS))
def test_script_runs_as_a_notebook(name, tmp_path):
    if not (ROOT / f"{name}.py").exists():
        pytest.skip(f"{name}.py is not written yet")
    if name in NEEDS_MIRROR and not MIRROR:
        pytest.skip("no local data mirror")
    notebook = jupytext.read(ROOT / f"{name}.py", fmt="py:percent")
    assert len(notebook.cells) >= 2, f"{name}.py has no `# %%` cells"
    guard = notebook.cells[-1].source.strip()
    assert guard.startswith('if __name__ == "__main__":') and guard.count("\n") == 1, \
        f"the last cell of {name}.py must hold the `if __name__ == \"__main__\":` guard alone, not {guard[:200]!r}"
    # The notebook runs in a folder laid out like a clone: with no __file__, it finds the shipped text from there.
    (tmp_path / "datasets").symlink_to(ROOT / "datasets")
    setup, arguments = NOTEBOOK_ARGS[name]
    notebook.cells[-1].source = (setup + "try:\n    result = main(" + json.dumps(arguments) + ")\n"
                                 "except SystemExit as stop:  # --help ends with SystemExit(0)\n"
                                 "    assert stop.code in (0, None), stop.code\n")
    notebook.cells.insert(0, jupytext.reads(NO_NETWORK.format(root=str(ROOT)), fmt="py:percent").cells[0])
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, when any cell fails
