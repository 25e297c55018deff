"""``iclora``: the command line. Each command validates its invocation first (one-line errors,
non-zero exit), then runs a Prefect flow or a library function with a rich progress display.
``--runner local`` runs a build with no Prefect import at all."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from iclora_data.errors import IcloraError
from iclora_data.sources import source_exists

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="In-Context LoRA training data: image sets -> composite grids -> joint captions -> "
                       "Hugging Face datasets -> FLUX LoRA.")
err = Console(stderr=True)
out_console = Console()


def fail(message: str, code: int = 2) -> NoReturn:
    # escape: messages quote tags such as [MOVIE-SHOTS] and extras such as iclora[ray], not rich markup
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(result: dict[str, Any]) -> None:
    """A build's warnings (e.g. most captions failed), one ``warning:`` line each, on stderr."""
    for message in result.get("warnings") or []:
        err.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _prefect_env(verbose: bool) -> None:
    """Quiet, offline-friendly Prefect defaults, set before Prefect is imported."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    # the temporary server needs longer than Prefect's 20 s default on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # Prefect's handlers exist from here on; the filter below amends them
    if not verbose:
        for handler in _prefect_console_handlers():
            handler.addFilter(_drop_user_errors)


def _drop_user_errors(record: logging.LogRecord) -> bool:
    """Without -v a failure reaches the user as the CLI's one `error:` line: Prefect's own console echo of
    it (a flow's traceback, a task's "Finished in state Failed") is dropped, and so is any IcloraError's.
    Prefect's database and UI still get every record; our own warnings still show; -v shows everything."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, IcloraError):
        return False
    return not (record.name.startswith("prefect") and record.levelno >= logging.ERROR)


def _prefect_console_handlers() -> list[logging.Handler]:
    """Prefect's console handlers (it puts one on the root logger), not the one that feeds its API."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)
                                      if name.startswith("prefect"))]
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and type(h).__module__.startswith("prefect")]


def check_writable(out: Path) -> None:
    """OUT must be a folder we can create and write into."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".iclora-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        fail(f"OUT {out} is not writable: {exc.strerror or exc}")


class RichProgress:
    """Progress listener that draws one bar per stage."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def start(self, stage: str, total: int) -> None:
        self.tasks[stage] = self.progress.add_task(stage, total=total)

    def advance(self, stage: str, n: int = 1) -> None:
        if stage in self.tasks:
            self.progress.advance(self.tasks[stage], n)


def _run_with_progress(fn: Any, *args: Any, flow: bool = False, **kwargs: Any) -> Any:
    """Call ``fn(*args, progress=listener, **kwargs)`` with a rich display of the stages on stderr; a Prefect
    ``flow`` gets the listener through ``flows.executors.driver_progress`` instead (not as a parameter)."""
    columns = (TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as bar:
        if not flow:
            return fn(*args, progress=RichProgress(bar), **kwargs)
        from flows.executors import driver_progress

        with driver_progress(RichProgress(bar)):
            return fn(*args, **kwargs)


RUNNER_HELP = ("Where the build runs: prefect (default: Prefect tasks on a thread pool, visible in the Prefect "
               "UI), local (a thread pool in this process, no Prefect at all) or ray.")


def _run_build(runner: str, ray_address: str | None, verbose: bool, source: str, out: str, cfg: Any,
               wait: float) -> dict[str, Any]:
    """The build on the chosen runner; ``local`` imports no Prefect."""
    from flows.runners import check_runner

    name = check_runner(runner, ray_address)
    if name == "local":
        from iclora_data.build import run_build
        from iclora_data.executors import ThreadExecutor

        result = _run_with_progress(run_build, source, out, cfg, executor=ThreadExecutor(cfg.workers),
                                    lock_timeout=wait)
        return dict(result.as_dict())
    _prefect_env(verbose)
    from flows.build_dataset import build_dataset
    from flows.runners import make_task_runner

    task_runner = make_task_runner(name, workers=cfg.workers, ray_address=ray_address)
    flow = build_dataset.with_options(task_runner=task_runner)
    return dict(_run_with_progress(flow, source, out, cfg.model_dump(mode="json"), flow=True, lock_timeout=wait))


def _counts_table(counts: dict[str, int], title: str) -> Table:
    table = Table(title=title, show_header=True)
    for key in counts:
        table.add_column(key, justify="right")
    table.add_row(*(str(v) for v in counts.values()))
    return table


@app.command()
def build(
    source: Annotated[str, typer.Argument(help="A folder with one sub-folder per image set, a .jsonl/.csv "
                                               "manifest, a .zip/.tar/.tar.gz archive, a Hugging Face dataset "
                                               "folder or hf://datasets/ORG/NAME[@revision].")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created; resumable).")],
    preset: Annotated[str | None, typer.Option(help="IC-LoRA task preset (see `iclora presets`).")] = None,
    layout: Annotated[str | None, typer.Option(help="Grid ROWSxCOLS when no preset is given, e.g. 2x2.")] = None,
    model: Annotated[str | None, typer.Option(help="Captioning model: hub id, local folder, or tiny-random.")] = None,
    backend: Annotated[str | None, typer.Option(help="Captioning backend: transformers or openai.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server, e.g. "
                                                      "http://localhost:8000/v1.")] = None,
    until: Annotated[str | None, typer.Option(help="Stop after this stage: compose, caption or publish.")] = None,
    fit: Annotated[str | None, typer.Option(help="How panels fill their box: crop (default) or pad.")] = None,
    workers: Annotated[int | None, typer.Option(help="Threads for decoding and composing.")] = None,
    runner: Annotated[str, typer.Option(help=RUNNER_HELP)] = "prefect",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster, e.g. ray://head:10001 (default with "
                                                         "--runner ray: a local Ray instance).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML build config; flags "
                                                                       "override it.")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another run on OUT to finish "
                                             "(0: refuse at once).")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Build IC-LoRA training data from SOURCE into OUT (the Prefect flow build-dataset, or --runner local)."""
    from iclora_data.config import load_config

    if not source_exists(source):
        fail(f"SOURCE {source} does not exist")
    try:
        cfg = load_config(config, {"compose.preset": preset, "compose.layout": layout, "compose.fit": fit,
                                   "caption.model": model, "caption.backend": backend,
                                   "caption.base_url": base_url, "until": until, "workers": workers})
        check_writable(out)
        if cfg.until != "compose":
            from iclora_data.caption import check_captioner

            # quick: no import of the model's code, so a fully cached re-run stays cheap; the build checks fully
            # (still before any output changes) once some set needs a caption
            check_captioner(cfg.caption, quick=True)
        result = _run_build(runner, ray_address, verbose, source, str(out), cfg, wait)
    except IcloraError as exc:
        if verbose:
            err.print_exception()  # -v: where it happened, then the one line
        fail(str(exc))
    out_console.print(_counts_table(result["counts"], f"iclora build -> {out}"))
    warn(result)
    out_console.print(f"ledger: {out / 'report.json'}")
    if (out / "gallery.html").exists():
        out_console.print(f"gallery: {out / 'gallery.html'}")
    if (out / "dataset").exists():
        out_console.print(f"dataset: {out / 'dataset'}")


@app.command()
def deploy(
    source: Annotated[Path, typer.Argument(help="SOURCE to build on every scheduled run.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (each run is incremental).")],
    cron: Annotated[str | None, typer.Option(help="Cron schedule, e.g. '0 3 * * *' (03:00 daily).")] = None,
    interval: Annotated[float | None, typer.Option(help="Or: run every this many seconds.")] = None,
    timezone: Annotated[str | None, typer.Option(help="Time zone of the cron schedule (default UTC).")] = None,
    name: Annotated[str, typer.Option(help="Deployment name (build-dataset/NAME in the Prefect UI).")]
    = "scheduled",
    preset: Annotated[str | None, typer.Option(help="IC-LoRA task preset.")] = None,
    layout: Annotated[str | None, typer.Option(help="Grid ROWSxCOLS when no preset is given.")] = None,
    model: Annotated[str | None, typer.Option(help="Captioning model: hub id, local folder, or tiny-random.")] = None,
    backend: Annotated[str | None, typer.Option(help="Captioning backend: transformers or openai.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server URL.")] = None,
    until: Annotated[str | None, typer.Option(help="Stop after this stage: compose, caption or publish.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML build config.")] = None,
    wait: Annotated[float, typer.Option(help="Seconds a run waits for another writer of OUT "
                                             "(0: fail at once).")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Serve build-dataset on a schedule from this process (needs PREFECT_API_URL; Ctrl-C stops and pauses)."""
    from iclora_data.config import load_config

    if not source.exists():
        fail(f"SOURCE {source} does not exist")
    _prefect_env(verbose)
    try:
        from flows.deploy import check_schedule, serve_build

        check_schedule(cron, interval, timezone)
        cfg = load_config(config, {"compose.preset": preset, "compose.layout": layout,
                                   "caption.model": model, "caption.backend": backend,
                                   "caption.base_url": base_url, "until": until})
        check_writable(out)
        if cfg.until != "compose":
            from iclora_data.caption import check_captioner

            check_captioner(cfg.caption)  # cheap: a bad model fails now, not at 03:00
        serve_build(str(source), str(out), cfg.model_dump(mode="json"), cron=cron, interval=interval,
                    timezone=timezone, name=name, lock_timeout=wait)
    except IcloraError as exc:
        fail(str(exc))


@app.command()
def retrain(
    source: Annotated[Path, typer.Argument(help="SOURCE of image sets.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Build folder (incremental).")],
    lora_dir: Annotated[Path, typer.Option("--lora-dir", help="Folder of the LoRA, its samples and card.")],
    preset: Annotated[str | None, typer.Option(help="IC-LoRA task preset of the build.")] = None,
    model: Annotated[str | None, typer.Option(help="Captioning model: hub id, local folder, or tiny-random.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML build config.")] = None,
    base: Annotated[str | None, typer.Option(help="FLUX base: hub id, local folder, or tiny-random.")] = None,
    train_config: Annotated[Path | None, typer.Option(help="YAML file of training settings.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps. (default 5000)")] = None,
    scale: Annotated[float | None, typer.Option(help="Train at this fraction of the composite size.")] = None,
    sample_preset: Annotated[str | None, typer.Option(help="Preset of the validation sets (default: --preset, else "
                                                         "the grid the LoRA trained at).")]
    = None,
    samples: Annotated[int, typer.Option(help="Validation sets to sample after training (0: none).")] = 2,
    sample_steps: Annotated[int, typer.Option(help="Denoising steps of each validation set.")] = 20,
    sample_scale: Annotated[float, typer.Option(help="Fraction of the preset's size for samples.")] = 1.0,
    force: Annotated[bool, typer.Option("--force", help="Train even if the data and settings are unchanged.")]
    = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another run on OUT.")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Build (incremental), train the LoRA when the data changed, sample validation sets, write the model card."""
    from iclora_data.config import load_config

    if not source.exists():
        fail(f"SOURCE {source} does not exist")
    try:
        from iclora_train.config import load_train_config

        cfg = load_config(config, {"compose.preset": preset, "caption.model": model})
        train_cfg = load_train_config(train_config, base=base, steps=steps, scale=scale)
        _prefect_env(verbose)
        from flows.retrain import retrain as retrain_flow
        from flows.retrain import sample_preset as pick_preset

        if samples:
            pick_preset(cfg.model_dump(mode="json"), sample_preset)
        check_writable(out)
        check_writable(lora_dir)
        from iclora_data.caption import check_captioner

        check_captioner(cfg.caption)
        # the retrain flow shows its progress in Prefect's logs (it takes no listener)
        result = retrain_flow(str(source), str(out), str(lora_dir), cfg.model_dump(mode="json"),
                              train_cfg.model_dump(mode="json"), preset=sample_preset, samples=samples,
                              sample_steps=sample_steps, sample_scale=sample_scale, force=force, lock_timeout=wait)
    except IcloraError as exc:
        fail(str(exc))
    out_console.print(_counts_table(result["build"]["counts"], f"iclora retrain -> {out}"))
    if result["trained"]:
        out_console.print(f"trained to step {result['step']}; LoRA: {result['weights']}")
    else:
        out_console.print(f"data and settings unchanged: kept the LoRA {result['weights']}")
    out_console.print(f"model card: {result['model_card']}")


@app.command()
def presets() -> None:
    """List the IC-LoRA task presets: size, grid and panel tags."""
    from iclora_data.presets import PRESETS

    table = Table(title="IC-LoRA presets")
    for col in ("preset", "size", "grid", "panel", "tags"):
        table.add_column(col)
    for p in PRESETS.values():
        pw, ph = p.width // p.cols, p.height // p.rows
        tags = " ".join(((p.prefix,) if p.prefix else ()) + p.panel_tags)
        table.add_row(p.name, f"{p.width}x{p.height}", p.grid, f"{pw}x{ph}", tags)
    out_console.print(table)


@app.command("caption")
def caption_cmd(
    out: Annotated[Path, typer.Argument(help="A finished build's OUT folder.")],
    model: Annotated[str | None, typer.Option(help="Captioning model: hub id, local folder, or tiny-random.")] = None,
    backend: Annotated[str | None, typer.Option(help="transformers or openai.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server URL.")] = None,
    prompt_file: Annotated[Path | None, typer.Option(help="Replace the built-in caption instructions.")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the server's API key.")]
    = None,
    concurrency: Annotated[int | None, typer.Option(help="openai: requests kept in flight (default 16).")] = None,
    extra_body: Annotated[str | None, typer.Option(help="openai: JSON object merged into every request, e.g. "
                                                        "'{\"repetition_penalty\": 1.05}'.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the exact prompt and image sizes one set "
                                                            "would be sent with; send nothing.")] = False,
    set_id: Annotated[str | None, typer.Option("--set", help="With --dry-run: the set to show.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML build config.")] = None,
    runner: Annotated[str, typer.Option(help="prefect (default) or local (no Prefect); see iclora build.")]
    = "prefect",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Re-caption an existing build and re-publish its dataset (the Prefect flow caption, or --runner local)."""
    import json

    from iclora_data.config import load_config

    if not (out / "report.json").exists():
        fail(f"{out} holds no finished build (no report.json): run `iclora build SOURCE --out {out}` first")
    try:
        extra = None
        if extra_body is not None:
            try:
                extra = json.loads(extra_body)
            except ValueError as exc:
                fail(f"--extra-body is not JSON: {exc}")
            if not isinstance(extra, dict):
                fail("--extra-body must be a JSON object")
        cfg = load_config(config, {"caption.model": model, "caption.backend": backend,
                                   "caption.base_url": base_url,
                                   "caption.prompt_file": str(prompt_file) if prompt_file else None,
                                   "caption.api_key_env": api_key_env, "caption.concurrency": concurrency,
                                   "caption.extra_body": extra})
        if dry_run:  # sends nothing, so it needs no server
            from iclora_data.caption.review import dry_run as show_request

            out_console.print(show_request(out, cfg.caption, set_id).text(), markup=False, highlight=False)
            return
        from iclora_data.caption import check_captioner

        check_captioner(cfg.caption)  # an openai server is probed: a dead URL fails here, in seconds
        from flows.runners import RunnerError, check_runner

        name = check_runner(runner)
        if name == "local":
            from iclora_data.build import recaption

            result = _run_with_progress(recaption, str(out), cfg.caption.model_dump(mode="json")).as_dict()
        elif name == "ray":
            raise RunnerError("iclora caption runs on prefect or local; for Ray, re-run `iclora build --runner ray`")
        else:
            _prefect_env(verbose)
            from flows.caption import caption as caption_flow

            result = _run_with_progress(caption_flow, str(out), cfg.caption.model_dump(mode="json"), flow=True)
    except IcloraError as exc:
        fail(str(exc))
    out_console.print(_counts_table(result["counts"], f"iclora caption -> {out}"))
    warn(result)


@app.command()
def publish(
    out: Annotated[Path, typer.Argument(help="A finished build's OUT folder.")],
    repo_id: Annotated[str, typer.Option(help="Hub dataset repository, ORG/NAME.")],
    private: Annotated[bool, typer.Option(help="Create the repository as private.")] = False,
    revision: Annotated[str | None, typer.Option(help="Branch to upload to.")] = None,
    endpoint: Annotated[str | None, typer.Option(help="Hub endpoint (default: HF_ENDPOINT or the "
                                                      "public hub).")] = None,
) -> None:
    """Upload OUT/dataset to the Hugging Face hub (token from HF_TOKEN or `hf auth login`)."""
    from iclora_data.hub import push_dataset

    try:
        result = push_dataset(out, repo_id, private=private, revision=revision, endpoint=endpoint)
    except IcloraError as exc:
        fail(str(exc))
    out_console.print(result.summary() if hasattr(result, "summary") else str(result))


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="A finished build's OUT folder.")],
    format: Annotated[str, typer.Option("--format", "-f", help="ai-toolkit, kohya or folder.")] = "ai-toolkit",
    dest: Annotated[Path | None, typer.Option(help="Where to write (default OUT/export/FORMAT).")] = None,
    root: Annotated[str | None, typer.Option(help="Write absolute paths under this folder (where the export "
                                                  "will be on the training machine) instead of relative ones.")] = None,
) -> None:
    """Write the image + .txt caption folder (and config, script, README) that a LoRA trainer reads."""
    from iclora_data.export import export_dataset

    if format not in ("ai-toolkit", "kohya", "folder"):
        fail(f"--format must be ai-toolkit, kohya or folder, got {format!r}")
    try:
        path = export_dataset(out, format, dest, root=root)  # type: ignore[arg-type]
    except IcloraError as exc:
        fail(str(exc))
    out_console.print(f"exported {format} data to {path}")


captions_app = typer.Typer(no_args_is_help=True, help="Review captions: export them to edit, import the edits.")
app.add_typer(captions_app, name="captions")


@captions_app.command("export")
def captions_export(
    out: Annotated[Path, typer.Argument(help="A finished build's OUT folder.")],
    dest: Annotated[Path, typer.Argument(help="Folder to write one editable JSON file per set into.")],
) -> None:
    """Write each set's caption (summary, panels, rendered caption) to DEST/<set>.json for editing."""
    from iclora_data.caption.review import export_captions

    try:
        count = export_captions(out, dest)
    except IcloraError as exc:
        fail(str(exc))
    out_console.print(f"exported {count} caption(s) to {dest}; edit them, then run "
                      f"`iclora captions import {out} {dest}`", markup=False)


@captions_app.command("import")
def captions_import(
    out: Annotated[Path, typer.Argument(help="A finished build's OUT folder.")],
    source: Annotated[Path, typer.Argument(help="Folder of edited JSON files from `iclora captions export`.")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML build config.")] = None,
) -> None:
    """Keep edited captions in OUT/captions-edited/: every later build or re-caption of OUT uses them
    (captioner `human`) over any model's."""
    from iclora_data.caption.review import edited_dir, import_captions
    from iclora_data.config import load_config

    try:
        cfg = load_config(config, {})
        ids = import_captions(out, source, cfg.caption)
    except IcloraError as exc:
        fail(str(exc))
    out_console.print(f"imported {len(ids)} edited caption(s) into {edited_dir(out)}; they apply at the next "
                      f"`iclora caption {out}` or build", markup=False)


def _register_train_commands() -> None:
    # iclora_train.commands imports torch/diffusers only inside the commands
    from iclora_train import commands as train_commands

    app.command("train")(train_commands.train)
    app.command("sample")(train_commands.sample)


_register_train_commands()


class Interrupted(SystemExit):
    """SIGTERM or SIGINT arrived. A SystemExit, so that click passes it through (it would print "Aborted!"
    for a KeyboardInterrupt) and the stack unwinds: locks are released, and the atexit hook that stops
    Prefect's temporary server runs, which SIGTERM's default (an immediate end) would skip."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


def _interrupt(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def main() -> None:  # pragma: no cover - console entry point
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    try:
        app()
    except IcloraError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except Interrupted as exc:
        err.print(f"[bold red]error:[/] interrupted by {exc.signal_name}; finished work is kept, run the same "
                  "command again to resume", highlight=False, soft_wrap=True)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
