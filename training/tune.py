"""Hyperparameter search over training.train's recipe with Optuna, for those who want the last point.

    python -m training.tune --data DIR --output-dir runs/tune [--trials 20] [--minutes 60]

Each trial is training.train's Trainer on the same splits with sampled learning rate, epoch cap, batch
size, warm-up and weight decay. Its validation macro-F1 goes to Optuna after every evaluation, and the
median pruner stops a trial that falls behind the others at the same point of training. The test split
is never looked at: choose on validation, then train and judge the chosen recipe with training.train.

The output directory holds:

    study.db        the Optuna study (SQLite): rerunning the same command continues it
    trials.csv      every trial: its parameters, best validation macro-F1, state and duration
    trials.md       the same as a table, best first
    importance.png  Optuna's parameter importances (after two finished trials)
    best.json       the best trial's full training.train options:
                    `make train RUN=runs/best ARGS="--config runs/tune/best.json"` reproduces it
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

from cli import UserError, check_int, option, run
from training.train import TrainConfig, build_trainer, load_data, resolve_model

log = logging.getLogger("training.tune")

# The search space, in the ranges the fine-tuning literature uses for encoders from MiniLM to large.
SPACE = {
    "learning_rate": ("log-uniform", 1e-5, 3e-4),
    "epochs": ("int", 2, 12),  # the cap; early stopping still ends a trial sooner
    "batch_size": ("choice", 16, 32, 64),
    "warmup_fraction": ("uniform", 0.0, 0.2),
    "weight_decay": ("uniform", 0.0, 0.1),
}
BEST_FILE, TRIALS_CSV, TRIALS_MD, IMPORTANCE_PNG, STUDY_DB = ("best.json", "trials.csv", "trials.md",
                                                              "importance.png", "study.db")


@dataclass
class TuneConfig:
    """Search training.train's learning rate, epoch cap, batch size, warm-up and weight decay with Optuna
    (pruning on validation macro-F1); writes the trials, an importance plot and best.json."""

    train: TrainConfig = option("the recipe to tune (every option of training.train; --output-dir is the tuning's)")
    trials: int = option("trials to run in all (a rerun continues the study up to this many)", 20)
    minutes: Optional[float] = option("stop starting new trials after this many minutes (default: no limit)", None)
    startup_trials: int = option("trials that run to the end before the pruner may stop any", 2)

    def __post_init__(self):
        check_int("--trials", self.trials, 1)
        check_int("--startup-trials", self.startup_trials, 0)
        if self.minutes is not None and self.minutes <= 0:
            raise UserError(f"--minutes must be positive, got {self.minutes}")
        if self.train.refit:
            raise UserError("--refit is for the final training run, not for tuning: pass it to training.train")
        if not self.train.early_stopping_patience:
            # Without evaluations there is nothing to prune on and nothing to compare trials by.
            raise UserError("tuning needs validation during training: --early-stopping-patience > 0")


def suggest(trial) -> dict:
    """One point of SPACE."""
    params = {}
    for name, (kind, *args) in SPACE.items():
        if kind == "log-uniform":
            params[name] = trial.suggest_float(name, *args, log=True)
        elif kind == "uniform":
            params[name] = trial.suggest_float(name, *args)
        elif kind == "int":
            params[name] = trial.suggest_int(name, *args)
        else:
            params[name] = trial.suggest_categorical(name, list(args))
    return params


def pruning_callback(trial, evals_per_epoch: int):
    """A TrainerCallback reporting each validation macro-F1 to Optuna and stopping the run when the pruner
    says so. Steps are counted in evaluations (half epochs by default), so trials with different batch
    sizes are compared at the same point of training."""
    from transformers import TrainerCallback

    class Pruning(TrainerCallback):
        pruned = False

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            step = round(state.epoch * evals_per_epoch)
            trial.report(metrics["eval_macro_f1"], step)
            if trial.should_prune():
                self.pruned, control.should_training_stop = True, True

    return Pruning()


def objective_for(config: TuneConfig, out: Path):
    """Optuna's objective: a trial's best validation macro-F1 (its checkpoints deleted afterwards)."""
    import optuna

    splits, problem, weights = load_data(config.train)
    model_path = resolve_model(config.train.model)

    def objective(trial) -> float:
        params = suggest(trial)
        trial_config = replace(config.train, output_dir=str(out / "trials" / f"trial-{trial.number}"), resume=False,
                               progress=False, **params)
        pruning = pruning_callback(trial, trial_config.evals_per_epoch)
        trainer, _, plan = build_trainer(trial_config, splits, model_path, problem, weights, callbacks=[pruning])
        try:
            trainer.train()
        finally:
            shutil.rmtree(trial_config.output_dir, ignore_errors=True)  # checkpoints of every trial add up
        trial.set_user_attr("epochs_run", round(trainer.state.epoch, 3))
        if pruning.pruned:
            raise optuna.TrialPruned()
        return trainer.state.best_metric

    return objective


def progress_line(study, trial) -> None:
    """One line per finished trial (Optuna's own bar shows the count and the best so far)."""
    value = "pruned" if trial.value is None else f"validation macro-F1 {100 * trial.value:.1f}"
    params = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in trial.params.items())
    best = study.best_value if any(t.value is not None for t in study.trials) else float("nan")
    log.info("trial %d %s: %s (%s); best so far %.1f", trial.number, trial.state.name.lower(), value, params,
             100 * best)


def write_results(study, config: TuneConfig, out: Path) -> dict:
    """trials.csv, trials.md, importance.png and best.json; returns best.json's content."""
    import optuna

    frame = study.trials_dataframe(attrs=("number", "value", "params", "state", "duration", "user_attrs"))
    frame.to_csv(out / TRIALS_CSV, index=False)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise UserError(f"no trial finished (see {out / TRIALS_CSV}); raise --trials or --minutes")
    rows = ["| trial | validation macro-F1 | " + " | ".join(SPACE) + " | epochs run | state |",
            "| --- | --- | " + " | ".join("---" for _ in SPACE) + " | --- | --- |"]
    ordered = sorted(study.trials, key=lambda t: (t.value is None, -(t.value or 0)))
    for t in ordered:
        value = "-" if t.value is None else f"{100 * t.value:.1f}"
        cells = [f"{t.params[k]:.3g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, "-")) for k in SPACE]
        rows.append(f"| {t.number} | {value} | " + " | ".join(cells) + f" | {t.user_attrs.get('epochs_run', '-')} "
                    f"| {t.state.name.lower()} |")
    (out / TRIALS_MD).write_text("\n".join(rows) + "\n")
    if len(done) >= 2:
        import matplotlib

        matplotlib.use("Agg")
        from optuna.visualization.matplotlib import plot_param_importances

        with warnings.catch_warnings():  # "experimental" since Optuna 2.2; the plot is what we want
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            plot_param_importances(study).figure.savefig(out / IMPORTANCE_PNG, dpi=120, bbox_inches="tight")
    else:
        log.info("importance plot skipped: it needs two finished trials")
    best = asdict(replace(config.train, **study.best_trial.params))
    best.pop("output_dir")  # the file is a recipe; where to write a run is the caller's
    (out / BEST_FILE).write_text(json.dumps(best, indent=2) + "\n")
    return {"best_value": study.best_value, "best_trial": study.best_trial.number, "best": best,
            "trials": len(study.trials), "finished": len(done)}


def main(config: TuneConfig) -> dict:
    import optuna

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress_line says the same in one line
    out = Path(config.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name="tune", storage=f"sqlite:///{(out / STUDY_DB).resolve()}", load_if_exists=True,
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.train.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=config.startup_trials, n_warmup_steps=2))
    remaining = config.trials - len(study.trials)
    if remaining > 0:
        log.info("tuning %d trials (%d already in %s)%s", remaining, len(study.trials), out / STUDY_DB,
                 f", at most {config.minutes:g} minutes" if config.minutes else "")
        started = time.perf_counter()
        study.optimize(objective_for(config, out), n_trials=remaining,
                       timeout=None if config.minutes is None else config.minutes * 60,
                       callbacks=[progress_line], show_progress_bar=config.train.progress, gc_after_trial=True)
        log.info("tuning took %.0f s", time.perf_counter() - started)
    result = write_results(study, config, out)
    log.info("best: trial %d, validation macro-F1 %.1f; reproduce with: make train RUN=runs/NAME ARGS=\"--config %s\"",
             result["best_trial"], 100 * result["best_value"], out / BEST_FILE)
    return result


if __name__ == "__main__":
    sys.exit(run(main, TuneConfig, prog="python -m training.tune"))
