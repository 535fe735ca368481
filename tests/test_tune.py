"""Tests for tune.py: a tiny study end to end, pruning, flags passed through to every trial, resuming, Ctrl-C."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import gpt
import tune

optuna = pytest.importorskip("optuna")

TEXT = "First Citizen: Before we proceed any further, hear me speak.\nAll: Speak, speak.\n" * 60


def write_char_dataset(folder):
    """train.bin / val.bin / meta.json as prepare_data.py writes them for characters."""
    folder.mkdir(parents=True, exist_ok=True)
    itos = sorted(set(TEXT))
    ids = np.array([itos.index(c) for c in TEXT], dtype=np.uint16)
    ids[:-200].tofile(folder / "train.bin")
    ids[-200:].tofile(folder / "val.bin")  # a short validation split: every trial ends on all of it
    meta = {"format": "nanoverse-tokens-v1", "tokenizer": "char", "vocab_size": len(itos), "dtype": "uint16",
            "itos": itos, "tokenizer_sha256": hashlib.sha256("".join(itos).encode("utf-8")).hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_four_tiny_trials_end_to_end_write_the_table_and_pictures(tmp_path, capsys):
    data = write_char_dataset(tmp_path / "data")
    study = tune.main(["--trials", "4", "--data_dir", str(data), "--out_dir", str(tmp_path / "out"), "--block_size",
                       "16", "--batch_size", "4", "--max_iters", "6", "--eval_interval", "2", "--log_interval", "2",
                       "--max_new_tokens", "1"])
    printed = capsys.readouterr().out
    assert len(study.trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert "| trial | learning_rate | weight_decay | n_layer | n_head | n_embd |" in printed
    assert all(f"\n| {number} | " in printed for number in range(4))
    best = study.best_trial
    assert f"best: val loss {best.value:.4f} (trial {best.number})\npython gpt.py --data_dir {data}" in printed
    assert f"--n_embd {best.params['n_head'] * best.params['head_size']}" in printed
    folder = tmp_path / "out" / "tune-gpt"
    assert (folder / "optimization_history.png").read_bytes()[:4] == b"\x89PNG"
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert (folder / "param_importances.png").exists() == (len(completed) >= 2)
    for trial in study.trials:  # each trial trained in a folder of its own; only finished ones keep a checkpoint
        assert (folder / f"trial-{trial.number:03d}" / "log.jsonl").is_file()
        assert (folder / f"trial-{trial.number:03d}" / "ckpt.pt").exists() == (trial.state.name == "COMPLETE")
    assert (tmp_path / "out" / "study.db").is_file()


def fake_train(losses, seen):
    """Stands in for gpt.train: evaluations at steps 2 and 4 with the given loss of each trial, and a checkpoint."""
    def train(config, on_eval=None):
        number = int(Path(config.out_dir).name.split("-")[1])
        seen.append(config)
        Path(config.out_dir).mkdir(parents=True)
        (Path(config.out_dir) / "ckpt.pt").write_bytes(b"weights")
        if losses[number] is None:
            raise KeyboardInterrupt
        for step in (2, 4):
            on_eval(step, losses[number])
        return {"val_loss": losses[number]}
    return train


def test_a_clearly_worse_trial_is_pruned_and_flags_pass_through(tmp_path, monkeypatch):
    data = write_char_dataset(tmp_path / "data")
    seen = []
    monkeypatch.setattr(gpt, "train", fake_train([1.0, 1.0, 1.0, 5.0, 1.0], seen))
    # eval_interval 2 and max_iters 4: one Hyperband bracket, whose first rung is the evaluation at step 2.
    flags = ["--data_dir", str(data), "--out_dir", str(tmp_path / "out"), "--max_iters", "4", "--eval_interval", "2",
             "--batch_size", "3", "--no-bias", "--seed", "7"]
    study = tune.main(["--trials", "4", *flags])
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    assert study.trials[3].last_step == 2
    assert not (tmp_path / "out" / "tune-gpt" / "trial-003" / "ckpt.pt").exists()  # the pruned trial's is removed
    assert (tmp_path / "out" / "tune-gpt" / "trial-000" / "ckpt.pt").exists()
    for config in seen:  # the flags typed reach every trial; the searched settings come from the trial
        assert (config.max_iters, config.eval_interval, config.batch_size, config.bias, config.seed) == (4, 2, 3,
                                                                                                       False, 7)
        assert config.n_embd % config.n_head == 0 and config.data_dir == str(data)
    assert len({(c.learning_rate, c.n_layer, c.mlp_ratio) for c in seen}) == 4
    # The same command with a larger --trials goes on; other flags are refused, and so is a searched one.
    assert len(tune.main(["--trials", "5", *flags]).trials) == 5
    assert len({(c.learning_rate, c.n_layer, c.mlp_ratio) for c in seen}) == 5  # not the first trial's settings again
    with pytest.raises(SystemExit, match="resume it with those flags, or give a new --study_name"):
        tune.main(["--trials", "6", *flags, "--batch_size", "5"])
    with pytest.raises(SystemExit, match="tune.py searches learning_rate: leave it out"):
        tune.main(["--trials", "6", *flags, "--learning_rate", "1e-3"])


def test_ctrl_c_marks_the_trial_failed_stops_the_study_and_still_shows_it(tmp_path, monkeypatch, capsys):
    data = write_char_dataset(tmp_path / "data")
    monkeypatch.setattr(gpt, "train", fake_train([1.0, None, 1.0], []))
    study = tune.main(["--trials", "3", "--data_dir", str(data), "--out_dir", str(tmp_path / "out"),
                       "--max_iters", "4", "--eval_interval", "2"])
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    printed = capsys.readouterr().out
    assert "interrupted: the same command resumes study tune-gpt" in printed and "| 1 | " in printed
    assert "no parameter importances: they need at least two completed trials" in printed


def test_bad_flags_and_a_missing_optuna_are_named_before_any_trial(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="run `python prepare_data.py nothing_here` first"):
        tune.main(["--dataset", "nothing_here", "--out_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if it were not installed
    with pytest.raises(SystemExit, match="tune.py needs Optuna: pip install optuna"):
        tune.main(["--out_dir", str(tmp_path / "out")])
