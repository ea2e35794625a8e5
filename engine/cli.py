"""The `antifraud` command line: simulate, features, train, evaluate, rules, backtest, serve, demo, sink."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

app = typer.Typer(
    help="Real-time antifraud scoring engine for card payments.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
rules_app = typer.Typer(help="Check rule sets.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
app.add_typer(keys_app, name="keys")
store_app = typer.Typer(help="Maintain the durable decision store.", no_args_is_help=True)
app.add_typer(store_app, name="store")
webhooks_app = typer.Typer(help="Webhook endpoints (docs/console.md).", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")
monitor_app = typer.Typer()
app.add_typer(monitor_app, name="monitor")
console = Console(stderr=True)
T = TypeVar("T")

HistoryOpt = Annotated[
    Path,
    typer.Option("--history", help="History file: .csv, .csv.gz or .parquet, or a folder of .parquet files"),
]
ColumnsOpt = Annotated[Path | None, typer.Option("--columns", help="YAML map: canonical name -> your column")]
StoreOpt = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="ANTIFRAUD_STORE",
        help="The decision store: a directory (Parquet) or a postgresql:// URL; default: DATA_DIR/decisions",
    ),
]
DataDirOpt = Annotated[
    Path,
    typer.Option("--data-dir", envvar="ANTIFRAUD_DATA_DIR", help="The service's data directory (./var)"),
]
# the worker commands beside `serve` (sink, hooks): "" means the Redis `serve` runs under --data-dir
ServedRedisOpt = Annotated[
    str,
    typer.Option("--redis", envvar="ANTIFRAUD_REDIS_URL", help="Default: the embedded one of --data-dir"),
]


def _served_redis(redis_url: str, data_dir: Path) -> str:
    """The URL given, or the unix socket of the redis-server `serve` embeds under `data_dir`."""
    from antifraud.engine.redis_server import socket_path

    return redis_url or f"unix://{socket_path((data_dir / 'redis').resolve())[0]}"


def _store_url(store: str, data_dir: Path) -> str:
    """The store to use: the one given, else the Parquet store under the data directory (as `serve`)."""
    return store or str(data_dir.absolute() / "decisions")


def _label_delay(text: str) -> timedelta:
    """A --label-delay such as 7d or 36h (features.spec durations: ms, s, m, h, d)."""
    from antifraud.features.spec import parse_duration

    try:
        return timedelta(milliseconds=parse_duration(text))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


LabelDelayOpt = Annotated[
    timedelta | None,
    typer.Option(
        "--label-delay",
        parser=_label_delay,
        metavar="DURATION",
        help="When a fraud label becomes known after its payment, for rows without label_time "
        "(e.g. 7d, 36h; default 30d, or the model's recorded delay)",
    ),
]


DaskOpt = Annotated[
    str | None,
    typer.Option(
        "--dask",
        metavar="SCHEDULER",
        help="Compute features and train trees on Dask: 'local' starts a cluster on this machine, "
        "else a scheduler address (tcp://host:8786); needs the dask extra (docs/scale.md)",
    ),
]


def _on_dask(scheduler: str | None) -> contextlib.AbstractContextManager[object]:
    """The `--dask` cluster for the command's duration (nothing without the option)."""
    if scheduler is None:
        return contextlib.nullcontext()
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise _fail("--dask needs the dask extra: pip install 'antifraud[dask]'")
    from antifraud.training.dask_cluster import dask_cluster

    return dask_cluster(scheduler)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(1)


def _date(value: datetime) -> date:
    return value.date()


def _run(step: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run a long step with a live line saying what it does; its ValueErrors become clear errors."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            return step(*args, progress=progress, **kwargs)
    except ValueError as exc:
        raise _fail(str(exc)) from exc


@app.command()
def simulate(
    days: Annotated[int, typer.Option(help="Days of history")] = 60,
    cards: Annotated[int, typer.Option(help="Number of cards")] = 3000,
    merchants: Annotated[int, typer.Option(help="Number of merchants")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same file")] = 7,
    out: Annotated[Path, typer.Option(help="Output file (.parquet, .csv or .csv.gz)")] = Path(
        "history.parquet"
    ),
    preset: Annotated[
        str,
        typer.Option(
            help="World: default, minimal, small-merchants, in-range or slow-labels "
            "(see 'Simulator presets' in docs/training.md)"
        ),
    ] = "default",
    drift_after: Annotated[
        int | None,
        typer.Option(
            metavar="DAY", help="Inject --drift trouble from this day on (0-based: 45 is the 46th day)"
        ),
    ] = None,
    drift: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KIND",
            help="new-fraud-pattern, missing-device or amount-scale (repeat, or a comma list; "
            "see docs/monitoring.md)",
        ),
    ] = None,
    drift_amount_factor: Annotated[
        float, typer.Option(help="amount-scale: the factor amounts are multiplied by")
    ] = 100.0,
) -> None:
    """Write a realistic simulated payment history with labelled fraud patterns."""
    from rich.progress import Progress

    from antifraud.training.history import write_history
    from antifraud.training.simulator import PRESET_NAMES, Drift
    from antifraud.training.simulator import simulate as run

    if preset not in PRESET_NAMES:
        raise _fail(f"unknown --preset {preset!r}: choose one of {', '.join(PRESET_NAMES)}")
    kinds = tuple(k.strip() for k in ",".join(drift or []).split(",") if k.strip())
    if (drift_after is None) != (not kinds):
        raise _fail("--drift-after DAY and --drift KIND go together")
    try:
        trouble = None if drift_after is None else Drift(drift_after, kinds, drift_amount_factor)
        if trouble is not None:
            trouble.check(days)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    with Progress(console=console) as progress:
        task = progress.add_task(f"simulating {days} days", total=days)
        frame = run(
            days=days,
            cards=cards,
            merchants=merchants,
            seed=seed,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            preset=preset,
            drift=trouble,
        )
    write_history(frame, out)
    frauds = int(frame["label"].sum())
    console.print(f"wrote {out}: {len(frame):,} payments, {frauds:,} frauds ({frauds / len(frame):.2%})")


@app.command()
def features(
    history: HistoryOpt,
    out: Annotated[Path, typer.Option(help="Output file (.parquet or .csv)")],
    columns: ColumnsOpt = None,
    label_delay: LabelDelayOpt = None,
    dask: DaskOpt = None,
) -> None:
    """Compute every feature of the spec, point-in-time, for each payment of a history."""
    from antifraud.features.offline import OfflineFeatures
    from antifraud.training.history import HistoryError, load_column_map, load_history

    try:
        frame = load_history(history, load_column_map(columns) if columns else None, label_delay)
    except HistoryError as exc:
        raise _fail(str(exc)) from exc
    if frame.attrs.get("label_time_defaulted") and label_delay is None:
        console.print(
            f"[yellow]warning:[/yellow] {frame.attrs['label_time_defaulted']:,} frauds have no label_time: "
            "each is taken as known 30 days after its payment; pass --label-delay with your chargeback delay"
        )
    with console.status("computing features") as status, _on_dask(dask):
        if dask is None:
            result = OfflineFeatures().transform(frame, progress=lambda e: status.update(f"features: {e}"))
        else:
            from antifraud.features.spec import load_spec
            from antifraud.training.dask_cluster import dask_transform

            status.update(f"features on Dask ({dask})")
            result = dask_transform(frame, load_spec())
    if out.suffix == ".parquet":
        result.to_parquet(out, index=False)
    else:
        result.to_csv(out, index=False)
    console.print(f"wrote {out}: {len(result):,} payments x {result.shape[1] - 1} features")


@app.command()
def train(
    history: HistoryOpt,
    train_start: Annotated[datetime, typer.Option("--train-start", formats=["%Y-%m-%d"])],
    train_end: Annotated[datetime, typer.Option("--train-end", formats=["%Y-%m-%d"], help="exclusive")],
    out: Annotated[Path, typer.Option(help="Model directory to write (refused if not empty, see --force)")],
    columns: ColumnsOpt = None,
    config: Annotated[Path | None, typer.Option(help="TRAIN.yaml with LightGBM settings")] = None,
    label_delay: LabelDelayOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace --out if it holds a model (a running service reloads it)")
    ] = False,
    dask: DaskOpt = None,
) -> None:
    """Train a LightGBM model on [train-start, train-end): trees chosen out of time, refitted on the
    whole period; prints the validation figures next to the logistic and rules-only baselines."""
    from antifraud.training.headline import print_headline
    from antifraud.training.train import run_training

    with _on_dask(dask):
        result = _run(
            run_training,
            history,
            _date(train_start),
            _date(train_end),
            out,
            columns=columns,
            config=config,
            label_delay=label_delay,
            force=force,
        )
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    print_headline(console, result.validation)
    meta = result.artifact.metadata
    console.print(
        f"model written to {out} ({result.artifact.version}, {meta['num_trees']} trees); thresholds "
        f"review {meta['thresholds']['review']:.4f}, block {meta['thresholds']['block']:.4f}"
    )


class EvalProtocol(StrEnum):
    """How `evaluate` measures: one period with a trained model, or rolling folds trained here."""

    single = "single"
    prequential = "prequential"


@app.command()
def evaluate(
    history: HistoryOpt,
    model: Annotated[
        Path | None, typer.Option(help="Model directory (single protocol; prequential trains its own)")
    ] = None,
    start: Annotated[datetime | None, typer.Option(formats=["%Y-%m-%d"], help="single: first day")] = None,
    end: Annotated[
        datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="exclusive; prequential: end of the last test period (default: after the last full day)",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Report directory (default: MODEL/eval-START-END, or prequential-HISTORY-END)"),
    ] = None,
    columns: ColumnsOpt = None,
    config: Annotated[Path | None, typer.Option(help="TRAIN.yaml: cost settings (review cost, ...)")] = None,
    protocol: Annotated[
        EvalProtocol, typer.Option(help="single: [start, end) with --model; prequential: rolling folds")
    ] = EvalProtocol.single,
    train_days: Annotated[
        int, typer.Option("--train-days", help="prequential: days each fold trains on")
    ] = 7,
    gap_days: Annotated[
        int | None,
        typer.Option("--gap-days", help="prequential: days between training and test (default: label delay)"),
    ] = None,
    test_days: Annotated[
        int, typer.Option("--test-days", help="prequential: test days per fold (and step)")
    ] = 7,
    folds: Annotated[int, typer.Option(help="prequential: number of folds")] = 4,
    label_delay: LabelDelayOpt = None,
    dask: DaskOpt = None,
) -> None:
    """Evaluate against the logistic and rules-only baselines: AUC, AP, card precision@100, recall at low
    FPR, the FPR reached, cost. `--protocol single` measures a trained model on a later period;
    `--protocol prequential` trains and tests rolling folds (train, gap, test) over the history."""
    from antifraud.training.headline import print_headline

    if protocol is EvalProtocol.prequential:
        from antifraud.training.config import load_config
        from antifraud.training.dataset import read_history
        from antifraud.training.prequential import prequential

        def run(progress: Progress) -> tuple[dict[str, object], Path]:
            rows = read_history(history, columns, require_label=True, label_delay=label_delay)
            result = prequential(
                rows,
                train_days=train_days,
                gap_days=gap_days,
                test_days=test_days,
                folds=folds,
                end=_date(end) if end else None,
                config=load_config(config),
                progress=progress,
            )
            target = out or Path(
                f"prequential-{history.stem.split('.')[0]}-{result.metrics['settings']['end']}"
            )
            result.write(target)
            return dict(result.metrics), target

        with _on_dask(dask):
            metrics, target = _run(run)
    else:
        from antifraud.training.evaluate import evaluate as run_single

        if model is None or start is None or end is None:
            raise _fail("--protocol single needs --model, --start and --end (or use --protocol prequential)")
        target = out or model / f"eval-{_date(start)}-{_date(end)}"
        with _on_dask(dask):
            metrics = dict(
                _run(
                    run_single,
                    history,
                    model,
                    _date(start),
                    _date(end),
                    out_dir=target,
                    columns=columns,
                    config=config,
                    label_delay=label_delay,
                )
            )
    for kind, style in (("notes", "note:"), ("warnings", "[yellow]warning:[/yellow]")):
        lines = metrics.get(kind)
        for line in lines if isinstance(lines, list) else []:
            console.print(f"{style} {escape(str(line))}")
    print_headline(console, metrics)
    console.print(f"report written to {target}")


@app.command("score-history")
def score_history(
    history: HistoryOpt,
    model: Annotated[Path, typer.Option(help="Model directory")],
    start: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"])],
    end: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="exclusive")],
    out: Annotated[Path, typer.Option(help="Output file (.csv or .parquet)")],
    rules: Annotated[Path | None, typer.Option(help="Apply this rule set as in production")] = None,
    columns: ColumnsOpt = None,
    label_delay: LabelDelayOpt = None,
    dask: DaskOpt = None,
) -> None:
    """Score every payment of a period with point-in-time features (the history is read as the
    model's was: its recorded --columns and --label-delay unless given)."""
    from antifraud.training.scoring import score_history as run

    with _on_dask(dask):
        frame = _run(
            run,
            history,
            model,
            _date(start),
            _date(end),
            out,
            rules_dir=rules,
            columns=columns,
            label_delay=label_delay,
        )
    for note in frame.attrs.get("notes", []):
        console.print(f"note: {escape(note)}")
    console.print(f"wrote {out}")


@rules_app.command("check")
def rules_check(directory: Annotated[Path, typer.Argument(help="Rule set directory")]) -> None:
    """Validate a rule set and list every error (exit 1 when there is one)."""
    from antifraud.engine.rules import rule_names, run_check
    from antifraud.features.spec import load_spec

    raise typer.Exit(run_check(directory, rule_names(load_spec().feature_names), Console()))


@app.command()
def backtest(
    history: HistoryOpt,
    rules: Annotated[Path, typer.Option(help="Rule set to test")],
    start: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"])],
    end: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="exclusive")],
    baseline_rules: Annotated[
        Path | None, typer.Option("--baseline-rules", help="Rule set to compare with")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="Model directory (scores for the score bands)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON")] = None,
    columns: ColumnsOpt = None,
    label_delay: LabelDelayOpt = None,
    dask: DaskOpt = None,
) -> None:
    """Replay a period with point-in-time features: what a rule set would have done, per rule."""
    import json

    from antifraud.training.backtest import run_backtest
    from antifraud.training.backtest_report import print_report

    with _on_dask(dask):
        result = _run(
            run_backtest,
            history,
            rules,
            _date(start),
            _date(end),
            model_dir=model,
            baseline_rules_dir=baseline_rules,
            columns=columns,
            label_delay=label_delay,
        )
    print_report(result, Console())
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_json(), indent=2))
        console.print(f"wrote {json_out}")


KeysFileOpt = Annotated[Path, typer.Option("--file", help="Keys file (YAML of name, sha256, role, ...)")]


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Option(help="Who uses the key, e.g. checkout-eu")],
    role: Annotated[str, typer.Option(help="scorer, analyst or admin")],
    file: KeysFileOpt,
    merchant: Annotated[
        list[str] | None,
        typer.Option(help="Limit the key to this merchant id (repeatable); default: every merchant"),
    ] = None,
) -> None:
    """Create an API key: prints it once and stores only its SHA-256."""
    from antifraud.engine.auth import ROLES, KeyFileError, new_key

    chosen = next((r for r in ROLES if r == role), None)
    if chosen is None:
        raise _fail(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
    try:
        key = new_key(file, name, chosen, merchant or ())
    except KeyFileError as exc:
        raise _fail(str(exc)) from exc
    scope = f", merchants {', '.join(sorted(set(merchant)))}" if merchant else ""
    console.print(f"key for {name} ({role}{scope}) stored in {file}; it is shown once:")
    print(key)


@keys_app.command("list")
def keys_list(file: KeysFileOpt) -> None:
    """List the keys: name, role, merchants, created, and the first characters of the hash."""
    from antifraud.engine.auth import KeyFileError, load_keys

    if not file.exists():
        raise _fail(f"{file}: no such keys file")
    try:
        keys = load_keys(file)
    except KeyFileError as exc:
        raise _fail(str(exc)) from exc
    rows = [("NAME", "ROLE", "MERCHANTS", "CREATED", "SHA256")]
    rows += [
        (
            k.name,
            k.role,
            ",".join(sorted(k.merchants)) if k.merchants is not None else "*",
            k.created or "-",
            k.sha256[:8] + "...",  # enough to tell keys apart; never the whole hash
        )
        for k in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    console.print(f"{len(keys)} key(s) in {file}")


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Option(help="The key's name, as `keys list` shows it")], file: KeysFileOpt
) -> None:
    """Remove a key from the file: running services refuse it within about a second, no restart."""
    from antifraud.engine.auth import KeyFileError, revoke_key

    try:
        revoked = revoke_key(file, name)
    except KeyFileError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"revoked key {revoked.name} ({revoked.role}) in {file}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="ANTIFRAUD_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="ANTIFRAUD_PORT")] = 8000,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis", envvar="ANTIFRAUD_REDIS_URL", help="redis:// or unix:// URL; default: embedded"
        ),
    ] = None,
    workers: Annotated[int, typer.Option(envvar="ANTIFRAUD_WORKERS")] = 1,
    model: Annotated[Path | None, typer.Option(envvar="ANTIFRAUD_MODEL_DIR")] = None,
    rules: Annotated[Path | None, typer.Option(envvar="ANTIFRAUD_RULES_DIR")] = None,
    api_keys: Annotated[Path | None, typer.Option("--api-keys", envvar="ANTIFRAUD_API_KEYS")] = None,
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir",
            envvar="ANTIFRAUD_DATA_DIR",
            help="Where the embedded Redis keeps its files (its socket, pid file, log), under redis/",
        ),
    ] = Path("var"),
    sink: Annotated[
        bool,
        typer.Option(
            "--sink/--no-sink",
            envvar="ANTIFRAUD_SINK",
            help="Also run the decision sink: the decision and feedback streams -> the store "
            "(ANTIFRAUD_STORE, default DATA_DIR/decisions; docs/decisions.md). --no-sink when "
            "`antifraud sink` runs elsewhere: without a sink the buffer fills, and decisions are then "
            "answered unlogged",
        ),
    ] = True,
    hooks: Annotated[
        bool | None,
        typer.Option(
            "--hooks/--no-hooks",
            envvar="ANTIFRAUD_HOOKS",
            help="Also run the webhook delivery worker (default: on when ANTIFRAUD_WEBHOOKS names an "
            "endpoints file). --no-hooks when `antifraud hooks` runs elsewhere",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the scoring service (FastAPI on uvicorn) until SIGTERM or SIGINT (exit status 0)."""
    from antifraud.engine.service import run_service

    store = _store_url(os.environ.get("ANTIFRAUD_STORE", ""), data_dir)
    run_service(
        host=host,
        port=port,
        redis_url=redis_url,
        workers=workers,
        model=model,
        rules=rules,
        api_keys=api_keys,
        console=console,
        data_dir=data_dir,
        store_url=store,
        sink=sink,
        hooks=hooks,
    )


@app.command()
def demo(
    day: Annotated[
        str | None, typer.Option(help="Day of the sample to replay (default: the last full day)")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Replay at most this many payments")] = None,
    wait: Annotated[
        bool, typer.Option(help="On a terminal, keep the stack up for the risk console until Ctrl+C")
    ] = True,
) -> None:
    """Start the service on an embedded Redis, replay one sample day over HTTP, print a summary and the
    reviews waiting in the risk console."""
    from antifraud.engine.demo import run_demo

    sys.exit(run_demo(day=day, limit=limit, console=console, wait=wait))


@app.command("export-decisions")
def export_decisions(
    out: Annotated[Path, typer.Option(help="Output directory for Parquet files")],
    store: StoreOpt = "",
    data_dir: DataDirOpt = Path("var"),
    start: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="First payment day (UTC)")
    ] = None,
    end: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="Payments before this day (UTC; exclusive)")
    ] = None,
) -> None:
    """Write the decisions in the store (of payments in [--start, --end), or all) with their feedback
    as Parquet, for notebooks. The store is what `antifraud sink` writes: run it first."""
    from antifraud.engine.export import ExportError, export

    try:
        export(_store_url(store, data_dir), out, start, end, console=console)
    except ExportError as exc:
        raise _fail(str(exc)) from exc


@monitor_app.callback(invoke_without_command=True)
def monitor(
    ctx: typer.Context,
    model: Annotated[
        Path,
        typer.Option(envvar="ANTIFRAUD_MODEL_DIR", help="The live model's directory, with reference.json"),
    ] = Path("models/default"),
    store: StoreOpt = "",
    data_dir: DataDirOpt = Path("var"),
    decisions: Annotated[
        Path | None,
        typer.Option(help="An export-decisions directory or file, read instead of the store"),
    ] = None,
    start: Annotated[
        datetime | None, typer.Option("--from", formats=["%Y-%m-%d"], help="First day (UTC)")
    ] = None,
    end: Annotated[
        datetime | None, typer.Option("--to", formats=["%Y-%m-%d"], help="Exclusive (UTC)")
    ] = None,
    thresholds: Annotated[Path | None, typer.Option(help="YAML of thresholds (docs/monitoring.md)")] = None,
    label_delay: Annotated[
        timedelta | None,
        typer.Option(
            "--label-delay",
            parser=_label_delay,
            metavar="DURATION",
            help="Default: the model's recorded delay",
        ),
    ] = None,
    as_of: Annotated[
        datetime | None,
        typer.Option("--as-of", formats=["%Y-%m-%d"], help="Labels reported by then (default: now)"),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON")] = None,
    html: Annotated[Path | None, typer.Option(help="Write the report as HTML, plots beside it")] = None,
    history: Annotated[
        Path | None,
        typer.Option(help="The history the service's state was built from: recompute a sample's features"),
    ] = None,
) -> None:
    """Watch the live model over a period of decisions: feature and score drift, verdict mix, degraded
    share, live performance per week, champion and challenger (docs/monitoring.md). Exit status 0:
    nothing crossed a threshold; 3: an alert threshold was crossed; 2: bad input (a missing model,
    reference.json, store or file). `antifraud monitor reference` rebuilds a model's reference.json."""
    if ctx.invoked_subcommand is not None:
        return
    import tempfile

    from antifraud.engine.export import ExportError, export
    from antifraud.training.monitor.consistency import add_to_report
    from antifraud.training.monitor.output import print_report, write_html, write_json
    from antifraud.training.monitor.run import monitor as run_monitor

    with tempfile.TemporaryDirectory(prefix="antifraud-monitor-") as exported:
        try:
            if decisions is None:
                export(_store_url(store, data_dir), exported, start, end, console=console)
            report = run_monitor(
                decisions or Path(exported), model, start, end, thresholds, label_delay, as_of
            )
            if history is not None:  # online/offline consistency (training/monitor/consistency.py)
                add_to_report(report, decisions or Path(exported), history, start, end)
        except (ValueError, ExportError) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from exc
    print_report(report, Console())
    if json_out is not None:
        write_json(report, json_out)
    if html is not None:
        write_html(report, html)
    raise typer.Exit(report.exit_code)


@monitor_app.command("reference")
def monitor_reference(
    model: Annotated[Path, typer.Argument(help="Model directory")],
    history: HistoryOpt,
    columns: ColumnsOpt = None,
    label_delay: LabelDelayOpt = None,
) -> None:
    """Rebuild MODEL/reference.json from the history the model was trained on: its validation slice
    replayed and scored by the model (no retraining). `antifraud train` writes it itself."""
    from antifraud.training.monitor.reference import write_reference

    profile = _run(write_reference, model, history, columns=columns, label_delay=label_delay)
    console.print(
        f"wrote {model / 'reference.json'}: {profile.rows:,} payments of [{profile.period[0]}, "
        f"{profile.period[1]}), {len(profile.features)} features, model {profile.model_version}"
    )


@app.command()
def sink(
    redis_url: ServedRedisOpt = "",
    store: StoreOpt = "",
    data_dir: DataDirOpt = Path("var"),
    batch: Annotated[int, typer.Option(envvar="ANTIFRAUD_SINK_BATCH", help="Entries per write")] = 1000,
    block_ms: Annotated[
        int, typer.Option("--block-ms", envvar="ANTIFRAUD_SINK_BLOCK_MS", help="Wait for new entries (ms)")
    ] = 1000,
    namespace: Annotated[str, typer.Option(envvar="ANTIFRAUD_NAMESPACE")] = "af",
    consumer: Annotated[
        str | None,
        typer.Option(envvar="ANTIFRAUD_SINK_CONSUMER", help="Name in the consumer group (default: host-pid)"),
    ] = None,
    claim_idle_ms: Annotated[
        int,
        typer.Option(
            "--claim-idle-ms",
            envvar="ANTIFRAUD_SINK_CLAIM_IDLE_MS",
            help="Take over entries another sink left unacknowledged this long (ms)",
        ),
    ] = 60_000,
    linger_ms: Annotated[
        int,
        typer.Option(
            "--linger-ms",
            envvar="ANTIFRAUD_SINK_LINGER_MS",
            help="Wait this long to fill a started batch (ms)",
        ),
    ] = 1000,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", envvar="ANTIFRAUD_SINK_METRICS_PORT", help="Metrics port, 0: off")
    ] = 0,
) -> None:
    """Write the decision and feedback streams to the decision store until SIGTERM or SIGINT (which
    finish the batch in hand; exit status 0). Several sinks may run: they share the work."""
    import redis

    from antifraud.engine.sink import run_sink

    redis_url = _served_redis(redis_url, data_dir)
    if batch < 1:
        raise _fail(f"--batch must be at least 1, not {batch}")
    try:
        run_sink(
            redis_url,
            _store_url(store, data_dir),
            namespace=namespace,
            batch=batch,
            block_ms=block_ms,
            consumer=consumer,
            claim_idle_ms=claim_idle_ms,
            metrics_port=metrics_port,
            linger_ms=linger_ms,
        )
    except redis.ConnectionError as exc:  # at start; later failures are retried by the sink
        raise _fail(f"cannot reach Redis at {redis_url}: {exc}") from exc


@app.command()
def hooks(
    redis_url: ServedRedisOpt = "",
    webhooks: Annotated[
        Path | None, typer.Option("--webhooks", envvar="ANTIFRAUD_WEBHOOKS", help="The endpoints file")
    ] = None,
    data_dir: DataDirOpt = Path("var"),
    namespace: Annotated[str, typer.Option(envvar="ANTIFRAUD_NAMESPACE")] = "af",
    max_attempts: Annotated[
        int, typer.Option("--max-attempts", envvar="ANTIFRAUD_WEBHOOK_MAX_ATTEMPTS", min=1)
    ] = 12,
    timeout_s: Annotated[float, typer.Option("--timeout-s", envvar="ANTIFRAUD_WEBHOOK_TIMEOUT_S")] = 5.0,
    metrics_port: Annotated[
        int,
        typer.Option("--metrics-port", envvar="ANTIFRAUD_HOOKS_METRICS_PORT", help="Metrics port, 0: off"),
    ] = 0,
) -> None:
    """Deliver the webhook outbox's events to the endpoints until SIGTERM or SIGINT (exit status 0).
    Several may run: one delivers, the others stand by."""
    import redis

    from antifraud.engine.webhooks.config import WebhookConfigError
    from antifraud.engine.webhooks.worker import run_hooks

    if webhooks is None:
        raise _fail("no endpoints file: give --webhooks or ANTIFRAUD_WEBHOOKS (docs/console.md, Webhooks)")
    redis_url = _served_redis(redis_url, data_dir)
    try:
        run_hooks(redis_url, str(webhooks), namespace, max_attempts, timeout_s, metrics_port)
    except WebhookConfigError as exc:
        raise _fail(str(exc)) from exc
    except redis.ConnectionError as exc:  # at start; later failures are retried by the worker
        raise _fail(f"cannot reach Redis at {redis_url}: {exc}") from exc


@webhooks_app.command("secret")
def webhooks_secret() -> None:
    """Print a new endpoint secret for the endpoints file (give it to the receiver too)."""
    from antifraud.engine.webhooks.config import new_secret

    print(new_secret())


@store_app.command("compact")
def store_compact(
    store: StoreOpt = "",
    data_dir: DataDirOpt = Path("var"),
    day: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="A UTC day; default: days before today")
    ] = None,
) -> None:
    """Merge each day's Parquet files into one (run once a day, e.g. from cron after midnight UTC)."""
    from antifraud.engine.store import open_store
    from antifraud.engine.store.parquet import ParquetStore

    opened = open_store(_store_url(store, data_dir))
    try:
        if not isinstance(opened, ParquetStore):
            raise _fail("only the Parquet store has files to compact (PostgreSQL needs no compaction)")
        merged = opened.compact(day.date() if day else None)
    finally:
        opened.close()
    console.print(f"{merged} files merged")


@store_app.command("retention")
def store_retention(
    store: StoreOpt = "",
    data_dir: DataDirOpt = Path("var"),
    days: Annotated[
        int,
        typer.Option(
            envvar="ANTIFRAUD_RETENTION_DAYS", min=1, help="Keep this many days of payments (and feedback)"
        ),
    ] = 730,
) -> None:
    """Delete the decisions of payments older than --days, and the feedback received before then,
    in whole UTC days (run once a day, e.g. from cron)."""
    from antifraud.engine.store import open_store

    opened = open_store(_store_url(store, data_dir))
    try:
        deleted = opened.apply_retention(datetime.now(UTC) - timedelta(days=days))
    finally:
        opened.close()
    console.print(f"{deleted:,} records older than {days} days deleted")


if __name__ == "__main__":
    app()
