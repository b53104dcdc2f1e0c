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
    best.json       the best trial's training.train options exactly as it ran: its data, model, hyperparameters
                    and quick-run limits (--max-steps, --max-train-samples, --max-eval-samples), so
                    `textclf train --config runs/tune/best.json --output-dir runs/NAME` reproduces the trial
    best_full.json  only when the trials ran with quick-run limits: best.json with those limits lifted, i.e. a
                    full run with the best hyperparameters (`textclf train --config runs/tune/best_full.json
                    --output-dir runs/NAME`); a trial's epoch cap had no effect where --max-steps ended it sooner

Flags given to training.train after --config override the file (`make train RUN=runs/NAME ARGS="--config F"`
passes --data and --model only when DATA= or MODEL= is set).
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from handlers.checks import check_int
from textclf.core.errors import UserError
from textclf.core.options import option, run
from training.train import TrainConfig, build_trainer, load_data, resolve_model, show_progress

log = logging.getLogger(__name__)

# The search space, in the ranges the fine-tuning literature uses for encoders from MiniLM to large.
SPACE = {
    "learning_rate": ("log-uniform", 1e-5, 3e-4),
    "epochs": ("int", 2, 12),  # the cap; early stopping still ends a trial sooner
    "batch_size": ("choice", 16, 32, 64),
    "warmup_fraction": ("uniform", 0.0, 0.2),
    "weight_decay": ("uniform", 0.0, 0.1),
}
BEST_FILE, FULL_RUN_FILE, TRIALS_CSV, TRIALS_MD, IMPORTANCE_PNG, STUDY_DB = (
    "best.json", "best_full.json", "trials.csv", "trials.md", "importance.png", "study.db")
# Options that make a trial a quick run; best_full.json sets them back to training.train's defaults.
QUICK_RUN_LIMITS = ("max_steps", "max_train_samples", "max_eval_samples")


@dataclass
class TuneConfig:
    """Search training.train's learning rate, epoch cap, batch size, warm-up and weight decay with Optuna
    (pruning on validation macro-F1); writes the trials, an importance plot and best.json."""

    train: TrainConfig = option("the recipe to tune (every option of training.train; --output-dir is the tuning's)")
    trials: int = option("trials to run in all (a rerun continues the study up to this many)", 20)
    minutes: float | None = option("stop starting new trials after this many minutes (default: no limit)", None)
    startup_trials: int = option("trials that run to the end before the pruner may stop any", 2)

    def __post_init__(self):
        check_int("--trials", self.trials, 1, error=UserError)
        check_int("--startup-trials", self.startup_trials, 0, error=UserError)
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
    from transformers import TrainerCallback  # lazy, like every heavy import here: `textclf tune --help` stays fast

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
    import optuna  # lazy: loading Optuna takes a second `textclf tune --help` need not wait for

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
    """trials.csv, trials.md, importance.png, best.json and (after quick trials) best_full.json; returns what
    was written and where."""
    import optuna  # lazy: see objective_for

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
        import matplotlib  # lazy: only this plot needs it

        matplotlib.use("Agg")
        from optuna.visualization.matplotlib import plot_param_importances  # lazy: after matplotlib.use

        with warnings.catch_warnings():  # "experimental" since Optuna 2.2; the plot is what we want
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            plot_param_importances(study).figure.savefig(out / IMPORTANCE_PNG, dpi=120, bbox_inches="tight")
    else:
        log.info("importance plot skipped: it needs two finished trials")
    best = asdict(replace(config.train, **study.best_trial.params))
    best.pop("output_dir")  # the file is a recipe; where to write a run is the caller's
    (out / BEST_FILE).write_text(json.dumps(best, indent=2) + "\n")
    limits = quick_run_limits(best)
    full = out / FULL_RUN_FILE
    if limits:
        full.write_text(json.dumps({**best, **full_run_values()}, indent=2) + "\n")
    else:
        full.unlink(missing_ok=True)  # best.json is a full run already; an older best_full.json would mislead
    return {"best_value": study.best_value, "best_trial": study.best_trial.number, "best": best,
            "best_file": str(out / BEST_FILE), "full_run_file": str(full) if limits else None, "limits": limits,
            "trials": len(study.trials), "finished": len(done)}


def full_run_values() -> dict:
    """training.train's defaults for the quick-run limits: no step cap, every training and evaluation text."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    return {name: defaults[name] for name in QUICK_RUN_LIMITS}


def quick_run_limits(recipe: dict) -> dict:
    """The quick-run limits a recipe sets (those that differ from a full run's)."""
    return {name: recipe[name] for name, value in full_run_values().items() if recipe[name] != value}


def how_to_reproduce(result: dict) -> list[str]:
    """The lines `textclf tune` ends with: what best.json reproduces and, after quick trials, the full run."""
    lines = [f"best: trial {result['best_trial']}, validation macro-F1 {100 * result['best_value']:.1f}"]
    command = "textclf train --config {0} --output-dir runs/NAME  (make train RUN=runs/NAME ARGS=\"--config {0}\")"
    if result["limits"]:
        limits = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in result["limits"].items())
        lines.append(f"reproduce that trial (with its quick-run limits {limits}): {command.format(result['best_file'])}")
        lines.append(f"a full run with its hyperparameters (limits lifted): {command.format(result['full_run_file'])}")
    else:
        lines.append(f"reproduce it (a full run: the trials had no quick-run limits): {command.format(result['best_file'])}")
    return lines


def main(config: TuneConfig) -> dict:
    import optuna  # lazy: see objective_for

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
                       callbacks=[progress_line], show_progress_bar=show_progress(config.train), gc_after_trial=True)
        log.info("tuning took %.0f s", time.perf_counter() - started)
    result = write_results(study, config, out)
    for line in how_to_reproduce(result):
        log.info("%s", line)
    return result


def command(argv=None, prog="python -m training.tune") -> int:
    return run(main, TuneConfig, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(command())
