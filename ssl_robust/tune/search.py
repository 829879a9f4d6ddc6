"""Multi-objective Optuna search of DeACL hyperparameters on Ray Tune, tracked in MLflow.

Optuna (TPE, seeded) samples the space, maximising the linear probe's clean and EmbedAttack
accuracy; ASHA stops trials early on the robust accuracy. The study lives in an RDB (rerunning
continues it); each trial is one ``run_deacl`` fine-tune whose MLflow run is a child of the
search's parent run, which gets the Pareto front (PNG, CSV, metrics) when the search ends.
"""
from __future__ import annotations

import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler
from ray.tune.search.optuna import OptunaSearch
from tqdm import tqdm

from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.encoders import ResolvedEncoders
from ssl_robust.finetune import run_deacl
from ssl_robust.pareto import plot_pareto
from ssl_robust.search_config import ParamSpace, SearchCfg, check_search, normalized, trial_config
from ssl_robust.tracking import absolute_tracking_uri, flatten
from ssl_robust.tracking import search as tracked
from ssl_robust.tune.grid import legacy_tune_output, ray_session
from ssl_robust.uris import redact

OBJECTIVES = ("probe/clean_acc", "probe/embed_acc")
EPOCH = "epoch"
TEACHER = "teacher/"


def distributions(search: SearchCfg) -> dict[str, Any]:
    """Optuna distributions of the space, keyed by dotted DeaclCfg field."""
    def one(space: ParamSpace) -> Any:
        if space.choices is not None:
            return CategoricalDistribution(space.choices)
        if isinstance(space.low, int) and isinstance(space.high, int):
            return IntDistribution(space.low, space.high, log=space.log)
        return FloatDistribution(float(space.low), float(space.high), log=space.log)
    return {key: one(space) for key, space in normalized(search).items()}


def trial(params: dict[str, Any], context: dict[str, Any]) -> None:
    """One Tune trial: the base config with the sampled ``params``, fine-tuned in its MLflow run.

    Epochs are reported to Tune as they end, the last one only after the run has FINISHED (a
    scheduler's stop raises SystemExit inside ``tune.report``). A config fine-tuned before reports
    its logged history. The encoder is the command's resolution unless ``params`` change it.
    """
    cfg, uri = trial_config(DeaclCfg.model_validate(context["deacl"]), params), context["tracking_uri"]
    resolved = ResolvedEncoders.from_dict(context["encoders"]).of(cfg.encoder)
    last: dict[str, float] = {}

    def report(epoch: int, metrics: dict[str, float]) -> None:
        if epoch < cfg.epochs:
            tune.report({**metrics, EPOCH: epoch})
        else:
            last.update(metrics)

    tags = {"search": context["experiment"], tracked.PARENT_TAG: context["parent_run_id"],
            "tune_trial_id": tune.get_context().get_trial_id() or ""}
    run_id, _ = run_deacl(cfg, uri, context["experiment"], tags, report, resolved)
    history = {cfg.epochs: last} if last else tracked.epoch_history(run_id, uri, OBJECTIVES)
    for epoch, metrics in history.items():
        tune.report({**metrics, EPOCH: epoch})


class ParetoSearch(OptunaSearch):
    """OptunaSearch that tells Optuna COMPLETE only for trials that ran every epoch (ASHA-stopped
    ones are PRUNED, errored ones FAIL) and keeps each trial's deacl_id, last epoch, last
    objectives and teacher (epoch 0) objectives as user attributes."""

    def __init__(self, *args: Any, base: DeaclCfg, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base = base

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        params = super().suggest(trial_id)
        if params is not None:
            self._ot_trials[trial_id].set_user_attr("deacl_id", trial_config(self.base, params).deacl_id)
        return params

    def _record(self, trial_id: str, result: dict[str, Any], keys: tuple[str, ...], prefix: str = "") -> None:
        ot_trial = self._ot_trials.get(trial_id)
        for key in keys if ot_trial is not None else ():
            if isinstance(result.get(key), (int, float)):
                ot_trial.set_user_attr(prefix + key, result[key])

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if result.get(EPOCH) == 0:
            self._record(trial_id, result, OBJECTIVES, TEACHER)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if result:
            self._record(trial_id, result, (EPOCH, *OBJECTIVES))
        full = bool(result) and not error and result.get(EPOCH, -1) >= self.base.epochs
        super().on_trial_complete(trial_id, result if full else None, error)


class Progress(tune.Callback):
    """Trials done / total; tags each trial's MLflow run with its outcome and closes it if RUNNING."""

    def __init__(self, total: int, search: SearchCfg, tracking_uri: str) -> None:
        self.total, self.search, self.uri = total, search, tracking_uri
        self.counts = {"pruned": 0, "failed": 0}
        self.bar: tqdm | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "bar": None}

    def setup(self, **info: Any) -> None:
        self.bar = tqdm(total=self.total, desc="trials", unit="trial", file=sys.stderr)

    def _ended(self, trial: Any, outcome: str) -> None:
        deacl_id = trial_config(self.search.deacl, trial.config).deacl_id
        tracked.close_trial_run(self.search.name, self.uri, deacl_id, outcome)
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if self.bar is not None:
            self.bar.set_postfix({k: v for k, v in self.counts.items() if k != "complete"})
            self.bar.update(1)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        early = (trial.last_result or {}).get(EPOCH, -1) < self.search.deacl.epochs
        self._ended(trial, "pruned" if early else "complete")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, "failed")


@dataclass
class SearchReport:
    """What a search did: the study's trials (one row each), its Pareto front and where it is stored."""

    name: str
    storage: str  # the study's URL, password hidden
    parent_run_id: str
    ran: int
    failed: int
    params: list[str]
    trials: pd.DataFrame
    front: pd.DataFrame

    def lines(self) -> list[str]:
        cols = ["number", *[p for p in self.params if p in self.front], *OBJECTIVES]
        out = [self.front[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")] if len(self.front) else []
        states = self.trials["state"].value_counts().to_dict() if len(self.trials) else {}
        out.append(f"search {self.name}: {self.ran} trials run now ({self.failed} failed); study: {states}; "
                   f"Pareto front {len(self.front)} trials; MLflow parent run {self.parent_run_id}")
        return out + [f"optuna-dashboard {self.storage}"]


def _open_study(search: SearchCfg, storage: optuna.storages.RDBStorage) -> tuple[optuna.Study, int]:
    """Create or load the study, its objectives named; trials left RUNNING by a killed driver become
    FAIL. Returns the study and its number of finished (COMPLETE or PRUNED) trials."""
    study = optuna.create_study(study_name=search.name, storage=storage, directions=["maximize", "maximize"],
                                load_if_exists=True)
    if study.metric_names != list(OBJECTIVES):
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, still the way to name objectives
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(OBJECTIVES))  # optuna-dashboard names the axes, not "Objective 0/1"
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)
    return study, len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _tune(search: SearchCfg, study: optuna.Study, storage: Any, remaining: int, context: dict[str, Any],
          storage_path: str | None) -> int:
    """Run ``remaining`` trials; returns how many failed."""
    searcher = ParetoSearch(distributions(search), metric=list(OBJECTIVES), mode=["max", "max"], storage=storage,
                            study_name=search.name, seed=search.seed + len(study.trials), base=search.deacl)
    scheduler = AsyncHyperBandScheduler(time_attr=EPOCH, metric=OBJECTIVES[1], mode="max", max_t=search.deacl.epochs,
                                        grace_period=search.scheduler.grace_period,
                                        reduction_factor=search.scheduler.reduction_factor)
    progress = Progress(remaining, search, context["tracking_uri"])
    trainable = tune.with_parameters(trial, context=context)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": search.resources.cpu, "gpu": search.resources.gpu}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                    max_concurrent_trials=search.max_concurrent, reuse_actors=True,
                                    trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
        run_config=tune.RunConfig(name=f"{search.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=storage_path, verbose=0, callbacks=[progress]),
    )
    try:
        with legacy_tune_output():
            tuner.fit()
    finally:
        if progress.bar is not None:
            progress.bar.close()
    return progress.counts["failed"]


def trials_frame(study: optuna.Study, experiment: str, tracking_uri: str) -> pd.DataFrame:
    """One row per trial: number, state, params, last epoch, objectives, teacher objectives, whether
    it is on the Pareto front (``study.best_trials``), deacl_id and MLflow run id."""
    front = {t.number for t in study.best_trials}
    runs = tracked.newest_runs(experiment, tracking_uri)
    rows = []
    for t in study.trials:
        values = dict(zip(OBJECTIVES, t.values)) if t.state == TrialState.COMPLETE else \
            {k: t.user_attrs.get(k) for k in OBJECTIVES}
        rows.append({"number": t.number, "state": t.state.name, **t.params, EPOCH: t.user_attrs.get(EPOCH),
                     **values, **{k: v for k, v in t.user_attrs.items() if k.startswith(TEACHER)},
                     "pareto": t.number in front, "deacl_id": t.user_attrs.get("deacl_id"),
                     "run_id": runs.get(t.user_attrs.get("deacl_id", ""))})
    return pd.DataFrame(rows)


def _report(search: SearchCfg, study: optuna.Study, parent: str, uri: str, ran: int, failed: int) -> SearchReport:
    """Plot and tabulate the study, log both and the front's metrics to the parent run, finish it."""
    table = trials_frame(study, search.name, uri)
    scored = table.dropna(subset=list(OBJECTIVES)) if len(table) else table
    teacher_cols = [TEACHER + k for k in OBJECTIVES]
    teacher = list(scored[teacher_cols].dropna().itertuples(index=False, name=None)) \
        if set(teacher_cols) <= set(scored) else []
    with tempfile.TemporaryDirectory(prefix="search-") as tmp:
        png, csv = Path(tmp) / "pareto.png", Path(tmp) / "trials.csv"
        table.to_csv(csv, index=False)
        front = plot_pareto(scored, png, *OBJECTIVES, teacher=teacher, title=f"search {search.name}") \
            if len(scored) else scored
        metrics = [(f"front/{k}", row[k], int(row["number"])) for _, row in front.iterrows() for k in OBJECTIVES]
        metrics += [(f"best/{k}", front[k].max(), 0) for k in OBJECTIVES if len(front)]
        metrics.append(("front/size", len(front), 0))
        tracked.finish_parent_run(parent, uri, [p for p in (png, csv) if p.exists()], metrics)
    return SearchReport(search.name, redact(search.storage_url), parent, ran, failed, list(search.space), table, front)


def run_search(search: SearchCfg, tracking_uri: str | None = None, storage_path: str | None = None,
               address: str | None = None, num_cpus: int | None = None, quiet: bool = True,
               encoders: ResolvedEncoders | None = None) -> SearchReport:
    """Run the trials the study still lacks (Ray is joined or started only if some are missing),
    then log the Pareto front to the search's MLflow parent run and finish it; ``quiet`` as for a
    sweep; ``encoders``: the base encoder as the command resolved it (None: resolved here)."""
    check_search(search)
    optuna.logging.set_verbosity(optuna.logging.WARNING if quiet else optuna.logging.INFO)
    uri = absolute_tracking_uri(tracking_uri)
    storage = optuna.storages.RDBStorage(search.storage_url)
    study, done = _open_study(search, storage)
    tags = {"optuna_storage": redact(search.storage_url), "optuna_study": search.name}
    config_text = yaml.safe_dump(search.model_dump(mode="json"), sort_keys=False)
    parent = tracked.open_parent_run(search.name, uri, tags, flatten(search.model_dump(mode="json")), config_text)
    remaining = max(search.n_trials - done, 0)
    print(f"search {search.name}: {done} of {search.n_trials} trials done, {remaining} to run; "
          f"study: optuna-dashboard {redact(search.storage_url)}", file=sys.stderr)
    context = {"deacl": search.deacl.model_dump(mode="json"), "tracking_uri": uri,
               "experiment": search.name, "parent_run_id": parent,
               "encoders": (encoders or ResolvedEncoders([search.deacl.encoder])).as_dict()}
    failed = 0
    try:
        if remaining:
            with ray_session(search.resources, address, num_cpus, quiet=quiet):
                failed = _tune(search, study, storage, remaining, context, storage_path)
        tracked.kill_running(search.name, uri, parent)
        return _report(search, study, parent, uri, remaining, failed)
    except BaseException:
        tracked.finish_parent_run(parent, uri, [], [], "FAILED")
        raise
