"""Hyperparameter search for gpt.py with Optuna: a TPE sampler proposes settings, a Hyperband pruner stops bad trials.

Each trial runs gpt.py's train() in this process, in a fresh folder of its own, and reports the validation loss of
every evaluation to Optuna; Hyperband (Li et al. 2018) runs successive halving at several budgets at once and stops a
trial whose loss falls behind the others' at the same step. TPE (Bergstra et al. 2011) proposes the next settings from
the trials so far. The objective is the final validation loss on the whole split. The study lives in an SQLite file,
so a Ctrl-C loses only the trial in flight and the same command resumes. Optuna: Akiba et al. 2019.

Run:
    python prepare_data.py shakespeare_char && python tune.py --trials 25 --max_iters 1000 --eval_interval 100
    python tune.py --trials 25 --script gpt_rope.py --out_dir out-tune-rope   # the RoPE model
Every flag that tune.py does not search (see suggest) goes to every trial unchanged; `python gpt.py --help` lists them.
"""

import argparse
import dataclasses
import importlib
import json
import shlex
import sys
import warnings
from pathlib import Path


# %% The search space and the objective
def suggest(trial):
    """One point of the search space, sized for a CPU. n_embd is n_head * head_size: Optuna refuses a list of choices
    that changes from trial to trial, so the width is built from two fixed lists."""
    learning_rate = trial.suggest_float("learning_rate", 1e-4, 2e-2, log=True)
    n_head = trial.suggest_categorical("n_head", [2, 4, 8])
    return {"learning_rate": learning_rate, "min_lr": learning_rate / 10,  # the cosine ends at a tenth of the peak
            "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.3),
            "n_layer": trial.suggest_categorical("n_layer", [1, 2, 3]),
            "n_head": n_head, "n_embd": n_head * trial.suggest_categorical("head_size", [8, 16, 32]),
            "activation": trial.suggest_categorical("activation", ["gelu", "relu"]),
            "dropout": trial.suggest_float("dropout", 0.0, 0.3),
            "mlp_ratio": trial.suggest_categorical("mlp_ratio", [2, 3, 4])}


SEARCHED = ("learning_rate", "weight_decay", "n_layer", "n_head", "n_embd", "activation", "dropout", "mlp_ratio")


def objective(trial, train, base, study_dir, optuna):
    """Train one trial and return its final validation loss; every evaluation is reported, and a trial that the
    pruner stops ends with optuna.TrialPruned, its checkpoint removed (only finished trials are worth continuing)."""
    config = dataclasses.replace(base, **suggest(trial), out_dir=str(study_dir / f"trial-{trial.number:03d}"))

    def on_eval(step, val_loss):
        trial.report(val_loss, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}")

    try:
        return train(config, on_eval=on_eval)["val_loss"]
    except optuna.TrialPruned:
        (Path(config.out_dir) / "ckpt.pt").unlink(missing_ok=True)
        raise


# %% Plumbing: the study, the table of trials, the pictures, the command line (skip on a first read)
def table(study, optuna):
    """The trials as a Markdown table: settings, validation loss (complete: the final one on the whole split; pruned:
    the best evaluation before the stop) and how each ended."""
    rows = ["| trial | " + " | ".join(SEARCHED) + " | val loss | state |", "|---" * (len(SEARCHED) + 3) + "|"]
    for trial in study.trials:
        settings = {**trial.params, "n_embd": trial.params.get("n_head", 0) * trial.params.get("head_size", 0)}
        cells = [f"{settings[name]:.3g}" if isinstance(settings.get(name), float) else str(settings.get(name, ""))
                 for name in SEARCHED]
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        losses = [trial.value] if complete else list(trial.intermediate_values.values())
        state = trial.state.name.lower() + (f" at step {trial.last_step}" if trial.state.name == "PRUNED" else "")
        rows.append(f"| {trial.number} | {' | '.join(cells)} | {f'{min(losses):.4f}' if losses else '-'} | {state} |")
    return "\n".join(rows)


def command_line(script, typed, best):
    """The best settings as a ready command line (the flags typed, less the study's --out_dir, and the trial's)."""
    settings = {**{key: value for key, value in typed.items() if key != "out_dir"}, **best}
    flags = [f"--{key}" if value is True else f"--no-{key}" if value is False else f"--{key} {shlex.quote(str(value))}"
             for key, value in settings.items()]
    return f"python {script} " + " ".join(flags)


def pictures(study, out_dir, optuna):
    """Optuna's matplotlib pictures: the optimization history and the parameters' importances (PED-ANOVA)."""
    from optuna.visualization import matplotlib as plots

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    plots.plot_optimization_history(study).figure.savefig(out_dir / "optimization_history.png", bbox_inches="tight")
    if len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) < 2:
        return print("no parameter importances: they need at least two completed trials")
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    plots.plot_param_importances(study, evaluator=evaluator).figure.savefig(out_dir / "param_importances.png",
                                                                            bbox_inches="tight")


def main(argv=None):
    if argv is None:  # in a notebook sys.argv holds the kernel's own arguments, not ours
        argv = [] if "ipykernel" in sys.modules else sys.argv[1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--trials", type=int, default=25, help="trials in the study, the finished ones included")
    parser.add_argument("--script", default="gpt.py", choices=["gpt.py", "gpt_rope.py"], help="the model to tune")
    parser.add_argument("--study_name", default="", help="the study to create or resume (default: tune-<script>)")
    parser.add_argument("--storage", default="", help="Optuna storage (default: sqlite:///<out_dir>/study.db)")
    args, rest = parser.parse_known_args(argv)
    try:
        import optuna
    except ImportError:
        raise SystemExit("error: tune.py needs Optuna: pip install optuna")
    script = importlib.import_module(Path(args.script).stem)  # gpt.py or gpt_rope.py, beside this file
    config, typed = script.parse_args(rest)
    searched = sorted(set(typed) & {*SEARCHED, "min_lr"})
    if searched:
        raise SystemExit(f"error: tune.py searches {', '.join(searched)}: leave {'them' if searched[1:] else 'it'} out")
    config = dataclasses.replace(config, out_dir=typed.get("out_dir", "out-tune"), init_from="scratch")
    script.check_config(config)  # a mistake is named once, before the first trial
    script.load_data(config)
    study_dir = Path(config.out_dir) / (args.study_name or f"tune-{Path(args.script).stem}")
    study_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=study_dir.name, storage=args.storage or f"sqlite:///{Path(config.out_dir) / 'study.db'}",
        load_if_exists=True, direction="minimize",
        pruner=optuna.pruners.HyperbandPruner(min_resource=config.eval_interval, max_resource=config.max_iters))
    # TPE draws its first settings at random: a resumed study seeds it anew, or it would draw the first trials again.
    study.sampler = optuna.samplers.TPESampler(seed=config.seed + len(study.trials))
    flags = json.dumps({"script": args.script, **typed}, sort_keys=True)  # what every trial of the study shares
    if study.user_attrs.get("flags", flags) != flags:
        raise SystemExit(f"error: study {study_dir.name} ran with {study.user_attrs['flags']}: resume it with those "
                         f"flags, or give a new --study_name")
    study.set_user_attr("flags", flags)
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    try:
        study.optimize(lambda trial: objective(trial, script.train, config, study_dir, optuna),
                       n_trials=max(0, args.trials - len(done)))
    except KeyboardInterrupt:  # the trial in flight is marked failed; the finished ones are in the study
        print(f"\ninterrupted: the same command resumes study {study_dir.name}; the trials so far:")
    print(table(study, optuna))
    if any(trial.state.name == "COMPLETE" for trial in study.trials):
        best = suggest(optuna.trial.FixedTrial(study.best_params))  # the settings of the best trial, replayed
        print(f"best: val loss {study.best_value:.4f} (trial {study.best_trial.number})\n"
              f"{command_line(args.script, typed, best)}")
    pictures(study, study_dir, optuna)
    return study


# %% Run
if __name__ == "__main__":
    main()
