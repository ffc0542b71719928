"""The ``rlkit`` command: train, eval, list, plot; submit, status, logs and stop for Ray jobs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from rlkit.config import ConfigError

app = typer.Typer(
    name="rlkit", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    help="Reinforcement-learning post-training for language models.\n\n"
         "Run [bold]rlkit train[/bold] with no arguments to train the bundled tiny model on arithmetic.",
)
# Piped output (CI logs, grep) gets wide lines instead of rich's 80-column default, so keys and
# messages are never cut or wrapped mid-word.
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

OVERRIDES_HELP = ("Any config key can follow as --section.key VALUE (e.g. --rollout.temperature 0.7 "
                  "--learner.zero_stage 2 --objective.beta 0.04); see `rlkit list keys`.")
EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def _fail(message: str) -> None:
    from rich.text import Text

    # the message is plain text (it may hold brackets); soft_wrap keeps it whole for grep and tests
    err.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    raise typer.Exit(code=2)


def _split_config(args: list[str]) -> tuple[Optional[Path], list[str]]:
    """The optional leading CONFIG.yaml, then the overrides (click cannot mix the two itself)."""
    if args and not args[0].startswith("--"):
        return Path(args[0]), args[1:]
    return None, args


USAGE = "[CONFIG.yaml] [OPTIONS] [--section.key VALUE]..."


@app.command(context_settings=EXTRA_ARGS, options_metavar=USAGE,
             help=f"Train a policy. CONFIG.yaml is optional. {OVERRIDES_HELP}")
def train(
    ctx: typer.Context,
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Start from a shipped recipe "
                                         "(see `rlkit list recipes`); the config file and overrides apply on top."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder from its "
                                          "latest checkpoint; overrides still apply."),
) -> None:
    from rlkit.config import parse_override_args
    from rlkit.runs import RunDirectory
    from rlkit.validation import load_config

    try:
        config, rest = _split_config(list(ctx.args))
        overrides = parse_override_args(rest)
        if resume is not None:
            if config is not None or recipe is not None:
                _fail("--resume takes its config from the run folder; drop the config file and --recipe")
            trainer = _trainer_class(RunDirectory(resume).load_config().get("trainer", "rl")).from_run(
                resume, overrides)
        else:
            loaded = load_config(config, overrides, recipe)
            trainer = _trainer_class(loaded.trainer)(args=loaded)
        trainer.train(resume=resume is not None)
    except (ConfigError, FileExistsError) as exc:
        _fail(str(exc))
    except FileNotFoundError as exc:
        if resume is None:
            raise
        _fail(str(exc))  # --resume of a folder that is not a run


ADDRESS_HELP = "Ray Jobs API address: the dashboard of the cluster's head node, e.g. http://HEAD:8265."


@app.command(context_settings=EXTRA_ARGS, options_metavar=USAGE,
             help=f"Submit training to a Ray cluster as a job (Ray's Job Submission API). CONFIG.yaml is optional. "
                  f"{OVERRIDES_HELP}")
def submit(
    ctx: typer.Context,
    address: str = typer.Option(..., "--address", help=ADDRESS_HELP),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Start from a shipped recipe."),
    pip: list[str] = typer.Option([], "--pip", help="A package to install into the job's environment "
                                  "(repeatable); default: the cluster's environment already has rlkit."),
    python: str = typer.Option("python", "--python", help="The Python the job's driver runs with on the head node."),
    stop_timeout: float = typer.Option(300.0, "--stop-timeout", help="Seconds `rlkit stop` gives the run to "
                                       "finish its step and checkpoint before Ray kills it."),
) -> None:
    from rlkit import jobs
    from rlkit.config import parse_override_args
    from rlkit.validation import load_config

    try:
        config, rest = _split_config(list(ctx.args))
        job_id, run_dir = jobs.submit(load_config(config, parse_override_args(rest), recipe), address, python=python,
                                      pip=pip, stop_timeout_s=stop_timeout)
    except ConfigError as exc:
        _fail(str(exc))
    console.print(f"submitted {job_id}; run folder {run_dir}")
    console.print(f"  rlkit status {job_id} --address {address}\n  rlkit logs {job_id} --address {address} "
                  f"--follow\n  rlkit stop {job_id} --address {address}")


@app.command(help="The state of a submitted job.")
def status(job: str = typer.Argument(..., help="The job id `rlkit submit` printed."),
           address: str = typer.Option(..., "--address", help=ADDRESS_HELP)) -> None:
    from rlkit import jobs

    try:
        state = jobs.status(address, job)
    except ConfigError as exc:
        _fail(str(exc))
    console.print(f"{state['job']}: {state['status']}" + (f" ({state['message']})" if state["message"] else ""))
    if state["run_dir"]:
        console.print(f"run folder {state['run_dir']}")


@app.command(help="A submitted job's output (its driver's stdout and stderr).")
def logs(job: str = typer.Argument(..., help="The job id `rlkit submit` printed."),
         address: str = typer.Option(..., "--address", help=ADDRESS_HELP),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends.")) -> None:
    from rlkit import jobs

    try:
        jobs.logs(address, job, follow, sys.stdout)
    except ConfigError as exc:
        _fail(str(exc))


@app.command(help="Stop a submitted job cleanly: it finishes its step, writes a checkpoint and stopped.json; "
                  "`rlkit train --resume RUN` continues it.")
def stop(job: str = typer.Argument(..., help="The job id `rlkit submit` printed."),
         address: str = typer.Option(..., "--address", help=ADDRESS_HELP)) -> None:
    from rlkit import jobs

    try:
        state = jobs.stop(address, job)
    except ConfigError as exc:
        _fail(str(exc))
    console.print(f"{state['job']}: {state['status']}")
    stopped = Path(state["run_dir"]) / "stopped.json" if state["run_dir"] else None
    if stopped is not None and stopped.is_file():
        import json

        console.print(f"checkpoint at step {json.loads(stopped.read_text())['step']}; continue with: "
                      f"rlkit train --resume {state['run_dir']}")


def _trainer_class(trainer: str):
    """The config's ``trainer`` key picks the driver: one command, one run folder layout, and
    ``--resume`` works the same for both (the run's config.yaml says which it was)."""
    if trainer == "preference":
        from rlkit.preference.trainer import PreferenceTrainer

        return PreferenceTrainer
    from rlkit.trainer import RLTrainer

    return RLTrainer


@app.command(name="eval", context_settings=EXTRA_ARGS, options_metavar=USAGE,
             help=f"Greedy pass rate of a model on the held-out split. CONFIG.yaml is optional. {OVERRIDES_HELP}")
def evaluate(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model folder or hub id "
                                        "(a run's `final/` folder, say); default: the config's model."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Start from a shipped recipe."),
    pass_at: int = typer.Option(0, "--pass-at", min=0, help="Also sample 2K completions per row at the "
                                "config's temperature and report pass@1 and pass@K (unbiased estimator)."),
) -> None:
    from rlkit.config import parse_override_args
    from rlkit.validation import load_config
    from rlkit.trainer import RLTrainer

    try:
        config, rest = _split_config(list(ctx.args))
        overrides = parse_override_args(rest)
        if model:
            overrides["model.name_or_path"] = model
        loaded = load_config(config, overrides, recipe)
        loaded.trainer = "rl"  # a preference recipe's model is evaluated the same way: greedy answers, rewards
        trainer = RLTrainer(args=loaded)
        result = trainer.evaluate()
        sampled = trainer.pass_at_k(ks=(1, pass_at), num_samples=2 * pass_at) if pass_at else None
    except ConfigError as exc:
        _fail(str(exc))
    console.print(f"pass rate {result['pass_rate']:.1%} on {result['num_rows']} rows "
                  f"(mean reward {result['reward_mean']:.3f})")
    if sampled:
        console.print(f"sampled: pass@1 {sampled['pass@1']:.3f}, pass@{pass_at} {sampled[f'pass@{pass_at}']:.3f} "
                      f"({2 * pass_at} samples per row)")


@app.command(name="list", help="List objectives, estimators, losses, preference losses, rewards, envs, engines, "
                               "recipes, or every config key.")
def list_(what: str = typer.Argument(
        ..., help="objectives | estimators | losses | preference_losses | rewards | envs | engines | recipes | "
                  "keys")) -> None:
    from rlkit import plugins
    from rlkit.config import describe_fields, recipe_names, recipe_path

    registries = {"objectives": plugins.objectives, "estimators": plugins.advantage_estimators,
                  "losses": plugins.policy_losses, "rewards": plugins.rewards, "envs": plugins.envs,
                  "engines": plugins.engines, "preference_losses": plugins.preference_losses}
    table = Table(show_header=True, header_style="bold")
    if what in registries:
        table.add_column("name", no_wrap=True)
        table.add_column("from")
        table.add_column("about")
        for entry in registries[what].entries():
            table.add_row(entry.name, entry.origin, _first_line(entry.obj.__doc__))
    elif what == "recipes":
        table.add_column("recipe")
        table.add_column("about")
        for name in recipe_names():
            table.add_row(name, _first_line(_yaml_comment(recipe_path(name))))
    elif what == "keys":
        table.add_column("key", no_wrap=True)
        for column in ("type", "default", "meaning"):
            table.add_column(column)
        for key, type_name, default, text in describe_fields():
            table.add_row(key, type_name, repr(default), text)
    else:
        _fail(f"unknown list {what!r}; choose objectives, estimators, losses, preference_losses, rewards, envs, "
              "engines, recipes or keys")
    console.print(table)


@app.command(help="Draw RUN_DIR/reward_curve.png from the run's metrics.jsonl.")
def plot(run_dir: Path = typer.Argument(..., help="A run folder.")) -> None:
    from rlkit.runs import RunDirectory, plot_reward_curve

    run = RunDirectory(run_dir)
    if not run.metrics_path.is_file():
        _fail(f"{run_dir} has no metrics.jsonl")
    try:
        out = plot_reward_curve(run.metrics_path, run.plot_path, title=run.path.name)
    except ValueError as exc:
        _fail(str(exc))
    console.print(f"wrote {out}")


@app.command(name="sandbox-serve",
             help="Serve the code sandbox over HTTP (the SandboxFusion protocol: POST /run_code; GET /health) "
                  "until Ctrl-C, for clusters whose training nodes must not run model-written code; reward "
                  "actors send programs to it with rlkit.sandbox_service.RemoteSandbox. Requests can lower "
                  "the timeout and memory below these ceilings, never raise them.")
def sandbox_serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 for every interface "
                             "(the service runs whatever it is sent: expose it only to the cluster network)."),
    port: int = typer.Option(8080, "--port", min=0, help="Port to listen on; 0 picks a free one (printed)."),
    max_parallel: int = typer.Option(0, "--max-parallel", min=0, help="Programs run at once; more requests "
                                     "wait their turn. 0: the CPU count."),
    timeout_s: Optional[float] = typer.Option(None, "--timeout-s", min=0.001, help="Wall-clock ceiling per "
                                              "program in seconds (default: the SandboxLimits default)."),
    memory_mb: Optional[int] = typer.Option(None, "--memory-mb", min=64, help="Address-space ceiling per "
                                            "program in MB (default: the SandboxLimits default)."),
    max_body_mb: float = typer.Option(4.0, "--max-body-mb", min=0.001, help="Larger request bodies are "
                                      "refused (HTTP 413)."),
    require: Optional[str] = typer.Option(None, "--require", help="kernel: refuse to start without the "
                                          "sandbox kernel boundary (bubblewrap + seccomp; the default on "
                                          "Linux); any: accept the weaker layers."),
) -> None:
    import dataclasses
    import logging
    import time

    from rlkit import sandbox
    from rlkit.sandbox_service import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # one line per request
    ceiling = {"timeout_s": timeout_s, "memory_mb": memory_mb}
    try:
        sandbox.configure(require=require)
        limits = dataclasses.replace(sandbox.SandboxLimits(), **{k: v for k, v in ceiling.items() if v is not None})
        server = serve(host, port, max_parallel=max_parallel or None, limits=limits,
                       max_body_bytes=int(max_body_mb * 2**20))
    except (ValueError, OSError, sandbox.SandboxUnavailable) as exc:
        _fail(str(exc))
    # whole lines (a supervisor or test reads the URL from the first one)
    console.print(f"sandbox service on {server.url} (POST /run_code, GET /health)", markup=False, soft_wrap=True)
    console.print(f"layers: {', '.join(server.layers)}; {server.config.max_parallel} runs at once; ceilings "
                  f"{limits.timeout_s:g}s, {limits.memory_mb} MB", markup=False, soft_wrap=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.close()
        console.print("stopped")


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _yaml_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ")
    return ""


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
