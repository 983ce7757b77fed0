"""The ablation: train and score every rung of the ladder (`config.ladder`, the data of what each rung changes).

Each variant is trained for `ablation_epochs` with each of `ablation_seeds` seeds into
runs/<run>/ablation/<variant>/seed<seed>/ by the same engine as the main model, so a
finished variant is reused on the next build. Everything is scored on the selection
split (val): the ablation is itself a choice of recipe, so the report split (test)
stays out of it. On the CPU the rungs train side by side, one process of one thread
each (`fit_jobs`).
"""
from __future__ import annotations

import io
import multiprocessing
import signal
import sys
import traceback
from multiprocessing.connection import wait
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from ..config.ladder import VARIANTS, changes_between, variant_names, variant_params, variant_seeds
from ..data import images
from ..data.datasets import Dataset
from ..engine import train
from ..engine.checkpoint import load_model
from ..engine.models import count_flops, create_model
from ..engine.inference import predict
from ..engine.runtime import TrainingError, log, select_device
from ..machine import usable_cores
from ..metrics import scores
from . import evaluate


class Job(NamedTuple):
    """One training of the ablation: a variant with one seed (its params), into its own folder."""
    variant: str
    seed: int
    params: dict
    out: Path

    @property
    def name(self) -> str:
        return f"{self.variant} seed {self.seed}"


class _LinesToParent(io.TextIOBase):
    """A worker's stdout and stderr: each whole line goes to the parent, tagged with the job's name, and the
    parent prints it. So the lines of workers side by side stay readable and say whose they are, and in a
    notebook they go through the kernel's own stream like the parent's (ipykernel would also echo a
    child's own writes to the terminal). It is no terminal, so tqdm leaves its per-step bar off."""

    def __init__(self, conn):
        self.conn, self.tag, self.pending = conn, "", ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self.conn.send(("line", f"[{self.tag}] {line}"))
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.conn.send(("line", f"[{self.tag}] {self.pending}"))
            self.pending = ""


def rarest_classes(ds: Dataset, n: int = 2) -> list[str]:
    """The `n` classes with the fewest training images (among those in the validation split)."""
    counts = ds.split("train")["label"].value_counts()
    in_val = set(ds.split("val")["label"])
    return [ds.classes[c] for c in counts.sort_values(kind="stable").index if c in in_val][:n]


def _fit(job: Job, ds: Dataset) -> dict | TrainingError:
    """train.fit's result, or the TrainingError (NaN loss, out of memory) that stopped it."""
    try:
        return train.fit(job.params, ds, job.out)
    except TrainingError as err:
        return err


def _worker(ds: Dataset, cache_dir: Path, conn) -> None:
    """A worker's life: with one torch thread, train each job the parent sends until it sends None, and
    answer each with ("done", fit or TrainingError) or ("crashed", the traceback), after its ("line", text)
    messages. A spawned process starts from the modules' defaults, so the decoded-image cache folder that
    the parent built (a test's or a benchmark's own, too) comes explicitly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops every worker
    sys.stdout = sys.stderr = lines = _LinesToParent(conn)
    torch.set_num_threads(1)
    images.CACHE_DIR = cache_dir
    for job in iter(conn.recv, None):
        lines.tag = job.name
        try:
            answer = ("done", _fit(job, ds))
        except Exception:
            answer = ("crashed", traceback.format_exc())
        lines.flush()
        conn.send(answer)


def _answer(process, conn) -> tuple | None:
    """A busy worker's answer, once it has one ("died" if it ended without one), printing the lines it sent
    before; None while it is still at work."""
    alive = process.is_alive()  # before reading: a worker that answered and then ended is read, not lost
    try:
        while conn.poll():
            kind, value = conn.recv()
            if kind != "line":
                return kind, value
            log(value)
    except EOFError:
        return "died", None
    return None if alive else ("died", None)


def costliest_first(jobs: list[Job], num_classes: int) -> list[int]:
    """The jobs' indices in the order the workers get them: the most floating-point work first (the model's
    forward FLOPs per face, `models.count_flops`, times its epochs; ties keep the ladder's order).

    Handed out in the ladder's order, the costliest rung (the U-Net) started last, on one worker, while the
    other had nothing left to do. Handed out largest first, the last jobs to start are the short ones, so
    the workers finish close together; the order changes no job's result (each trains alone on its thread)."""
    def cost(job: Job) -> int:
        p = job.params
        model = create_model(p["model"], num_classes, p["channels"], p["image_size"], p["width"], p["dropout"],
                             p["dropblock"], valence_arousal=p["va_weight"] > 0)
        return count_flops(model) * p["epochs"]

    costs = [cost(job) for job in jobs]
    return sorted(range(len(jobs)), key=lambda i: -costs[i])


def _fit_in_workers(jobs: list[Job], ds: Dataset, workers: int, order: list[int]) -> list[dict | TrainingError]:
    """fit_jobs with workers > 0: start the workers (each pays torch's import once, not once per job), hand
    each idle one the next job in `order`, and collect their answers."""
    for size, channels in {(job.params["image_size"], job.params["channels"]) for job in jobs}:
        for split in ("train", "val"):  # built here, once: the workers only read the cache
            images.load_split(ds, split, size, channels)
    workers = min(workers, len(jobs))
    log(f"training {len(jobs)} ablation runs side by side in {workers} processes of one thread each")
    context = multiprocessing.get_context("spawn")
    outcomes: list = [None] * len(jobs)
    queued, idle = list(order), []
    busy = {}  # (process, connection) -> its job's index
    try:
        for _ in range(workers):
            conn, child = context.Pipe()
            process = context.Process(target=_worker, args=(ds, images.CACHE_DIR, child), name="ablation worker")
            process.start()
            child.close()  # the worker holds the only other end: its end, however it comes, wakes the wait
            idle.append((process, conn))
        while queued or busy:
            while queued and idle:
                worker, i = idle.pop(), queued.pop(0)
                worker[1].send(jobs[i])
                busy[worker] = i
            wait([handle for process, conn in busy for handle in (conn, process.sentinel)])
            for worker, i in list(busy.items()):
                answer = _answer(*worker)
                if answer is None:
                    continue
                kind, value = answer
                if kind == "crashed":
                    raise RuntimeError(f"ablation run {jobs[i].name} failed in its worker process:\n{value}")
                if kind != "done":
                    worker[0].join()
                    raise RuntimeError(f"the worker process training ablation run {jobs[i].name} ended (exit "
                                       f"code {worker[0].exitcode}) without a result")
                outcomes[i] = value
                del busy[worker]
                idle.append(worker)
        for process, conn in idle:
            conn.send(None)
            process.join()
    finally:  # an error, or Ctrl-C: stop every worker still there (a job keeps its last.pt and resumes next run)
        for process, conn in idle + list(busy):
            process.terminate()
            process.join()
            conn.close()
    return outcomes


def fit_jobs(jobs: list[Job], ds: Dataset, workers: int = 0, order: list[int] | None = None
             ) -> list[dict | TrainingError]:
    """Train every job (train.fit: a finished checkpoint for the same params is reused, an unfinished one
    resumed); each entry is its fit, or the TrainingError (NaN loss, out of memory) that stopped it, and
    the other jobs still train.

    workers=0: one after another in this process, with its threads: on CUDA or MPS the jobs would only
    share the one device. workers > 0 (the CPU): side by side in `workers` processes (no more than the
    jobs), each with ONE torch thread. These models are too small to keep several threads busy: two
    one-thread processes train 1.27x as many images/s in total as one process of two threads (small
    ResNet, batch 128, 48 px, 2 cores: 1068 vs 840). And one thread per job makes its weights independent
    of the machine's core count: the same as training it alone with one thread (test_ablation checks that
    they are equal). The workers are spawned, not forked (forking a process whose torch already runs
    threads can deadlock), and get the params, the Dataset and the folders by pickling; the decoded-image
    cache is built here first, so they never race to build it. An unexpected exception in a worker, or a
    worker that dies, is raised here with the job's name, and Ctrl-C stops every worker. `order`: the job
    indices in the order the workers get them (default `costliest_first`).
    """
    if workers == 0:
        return [_fit(job, ds) for job in jobs]
    return _fit_in_workers(jobs, ds, workers, costliest_first(jobs, len(ds.classes)) if order is None else order)


def _workers(device: torch.device) -> int:
    """fit_jobs' workers on `device`: none on CUDA or MPS; on the CPU one per core this process may use."""
    if device.type != "cpu":
        return 0
    return usable_cores()


def run(params: dict, ds: Dataset, run_dir: str | Path) -> list[dict]:
    """Train (or reuse) every variant with every seed (`fit_jobs`); score each best checkpoint on val and on
    train.

    Train is scored like val: the model in eval mode, the images without augmentation, so the train-val
    gap measures overfitting, not the augmentation's difficulty or dropout. Predictions go to
    predictions_train.csv and predictions_val.csv beside each checkpoint. A variant whose training fails
    (NaN loss, out of memory) is reported in its result's `error` and the others still run; nothing
    already trained is lost. Each result: variant, change, error, run_dirs, fits, train, val (lists, one
    entry per seed that trained, up to the first that failed).
    """
    root = Path(run_dir) / "ablation"
    device = select_device(params["device"])
    decoded = {split: images.load_split(ds, split, params["image_size"], params["channels"])
               for split in ("train", "val")}
    jobs = [Job(name, seed, variant_params(params, name, seed), root / name / f"seed{seed}")
            for name in variant_names(params) for seed in variant_seeds(params)]
    fits = fit_jobs(jobs, ds, _workers(device))
    results = []
    for name in variant_names(params):
        result = dict(variant=name, change=VARIANTS[name].change, error=None, run_dirs=[], fits=[], train=[],
                      val=[])
        for job, fit in ((job, fit) for job, fit in zip(jobs, fits) if job.variant == name):
            result["run_dirs"].append(job.out)
            if isinstance(fit, TrainingError):
                result["error"] = f"seed {job.seed}: {fit}"
                break
            model, _ = load_model(job.out / "best.pt", device)
            for split, (x, y, locations) in decoded.items():
                probs = predict(model, x, 2 * params["batch_size"], device, params["amp"])
                frame = evaluate.predictions_frame(locations, y, probs, ds.classes)
                evaluate.save_predictions(frame, job.out, split)
                result[split].append(frame)
            result["fits"].append(fit)
        results.append(result)
    return results


def summary_table(results: list[dict], ds: Dataset) -> pd.DataFrame:
    """One row per variant, scores on val (the selection split) as the mean over seeds: accuracy, balanced
    accuracy, macro-F1 (and its standard deviation over seeds when there are several), F1 of the rarest
    classes; train balanced accuracy (eval mode, no augmentation) and the gap, train minus val balanced
    accuracy (train is imbalanced and val balanced: plain accuracy would mix the class prior into the gap);
    the best epoch (mean over seeds), epochs trained and training minutes (all seeds). Failures say why."""
    rare = rarest_classes(ds)
    rows = []
    for r in results:
        row = dict(variant=r["variant"], change=r["change"])
        if r["error"]:
            rows.append({**row, "status": f"failed: {r['error']}"})
            continue
        per_seed = {split: np.array([scores(f["true"], f["predicted"]) for f in r[split]])
                    for split in ("train", "val")}  # (seeds, [accuracy, balanced accuracy, macro-F1])
        acc, bal, f1 = (float(v) for v in per_seed["val"].mean(0))
        train_bal = float(per_seed["train"][:, 1].mean())
        f1_sd = float(per_seed["val"][:, 2].std(ddof=1)) if len(r["val"]) > 1 else np.nan
        rare_f1 = np.mean([evaluate.per_class_table(f["true"], f["predicted"], ds.classes).set_index("emotion")
                           .loc[rare, "f1"].to_numpy() for f in r["val"]], axis=0)
        rows.append({**row, "status": "ok", "seeds": len(r["val"]), "accuracy": acc, "balanced_accuracy": bal,
                     "macro_f1": f1, "macro_f1_sd": f1_sd, **{f"f1_{c}": float(v) for c, v in zip(rare, rare_f1)},
                     "train_balanced_accuracy": train_bal, "gap": train_bal - bal,
                     "best_epoch": float(np.mean([fit["best_epoch"] for fit in r["fits"]])),
                     "epochs": max(len(fit["history"]) for fit in r["fits"]),
                     "train_minutes": sum(fit["train_time_s"] for fit in r["fits"]) / 60})
    return pd.DataFrame(rows)


def steps(results: list[dict], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Each rung that trained against the nearest rung above it that trained: the macro-F1 difference on val
    (mean over seeds) with its paired bootstrap 95% CI (`evaluate.paired_bootstrap`: the same images,
    resampled together) and the verdict, "noise" when the CI spans 0. `changes` says what differs: one
    idea between neighbours, every skipped rung's change too when the run's list leaves rungs out."""
    ok = [r for r in results if not r["error"]]
    rows = []
    for above, r in zip(ok, ok[1:]):
        y_true = r["val"][0]["true"].to_numpy()
        pred = {x["variant"]: np.stack([f["predicted"].to_numpy() for f in x["val"]]) for x in (above, r)}
        ci = evaluate.paired_bootstrap(y_true, pred[above["variant"]], pred[r["variant"]], n_boot, seed)
        rows.append(dict(variant=r["variant"], above=above["variant"],
                         changes="; ".join(changes_between(above["variant"], r["variant"])),
                         macro_f1_change=ci["difference"], ci_low=ci["low"], ci_high=ci["high"],
                         verdict=ci["verdict"]))
    return pd.DataFrame(rows, columns=["variant", "above", "changes", "macro_f1_change", "ci_low", "ci_high",
                                       "verdict"])


def histories(results: list[dict]) -> dict[str, pd.DataFrame]:
    """Per-epoch history of every variant that trained (its first seed's)."""
    return {r["variant"]: r["fits"][0]["history"] for r in results if not r["error"]}


def comparisons(results: list[dict], classes) -> tuple[dict, dict]:
    """({variant: confusion matrix}, {variant: per-class table}) on val, every seed's predictions pooled,
    for figures.compare_*."""
    pooled = {r["variant"]: pd.concat(r["val"], ignore_index=True) for r in results if not r["error"]}
    cms = {name: evaluate.confusion(f["true"], f["predicted"], classes) for name, f in pooled.items()}
    tables = {name: evaluate.per_class_table(f["true"], f["predicted"], classes) for name, f in pooled.items()}
    return cms, tables


def best_variant(table: pd.DataFrame) -> pd.Series:
    ok = table[table["status"] == "ok"]
    return ok.loc[ok["macro_f1"].idxmax()]


def rare_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("f1_")]
