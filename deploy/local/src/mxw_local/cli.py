"""`mxw`: run the local stack, mint dev tokens, submit audio and follow it, search."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import websockets
from mxw_shared.devissuer import DevIssuer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from mxw_local.stack import BrokerKind, StackConfig, StackInfo, Supervisor, broker_problem

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
console = Console(stderr=True)
out = Console()

DataDir = Annotated[
    Path, typer.Option("--data-dir", envvar="MXW_DATA_DIR", help="Local stack data directory.")
]
Token = Annotated[
    str | None, typer.Option("--token", envvar="MXW_TOKEN", help="Bearer token (mxw token USER).")
]
Gateway = Annotated[
    str | None, typer.Option("--gateway", envvar="MXW_GATEWAY_URL", help="Gateway base URL.")
]
Notifier = Annotated[
    str | None, typer.Option("--notifier", envvar="MXW_NOTIFIER_URL", help="Notifier base URL.")
]
TERMINAL = {"done", "failed", "cancelled"}


@app.command()
def up(
    data_dir: DataDir = Path(".data"),
    host: str = "127.0.0.1",
    gateway_port: int = 8000,
    notifier_port: int = 8001,
    transcriber_port: int = 8002,
    chunker_port: int = 8003,
    embedder_port: int = 8004,
    diarizer_port: int = 8005,
    postgres_port: int = 54329,
    kafka_port: int = 19092,
    broker: Annotated[
        BrokerKind,
        typer.Option(
            help="embedded: the tansu broker (in-memory topics); kafka: Apache Kafka from"
            " Maven Central (needs Java 17+ and, on first use, Maven); external: a Kafka"
            " cluster run elsewhere (--kafka-bootstrap)."
        ),
    ] = "embedded",
    kafka_bootstrap: Annotated[
        str | None,
        typer.Option(
            help="With --broker external: the cluster's bootstrap servers, HOST:PORT,..."
            " (topics get MXW_KAFKA_REPLICATION_FACTOR replicas)."
        ),
    ] = None,
    whisper_model: Annotated[
        str, typer.Option(envvar="MXW_DEFAULT_MODEL", help="Default Whisper model.")
    ] = "base",
    log_format: str = "console",
    color: bool = True,
    dev_sign_in: Annotated[
        bool,
        typer.Option(
            help="The web page's sign-in as any user (mints dev tokens); keep it on loopback."
        ),
    ] = True,
) -> None:
    """Start PostgreSQL, the broker and all six services; Ctrl-C stops everything."""
    if problem := broker_problem(broker, kafka_bootstrap):
        raise typer.BadParameter(problem)
    config = StackConfig(
        data_dir=data_dir,
        host=host,
        postgres_port=postgres_port,
        kafka_port=kafka_port,
        broker=broker,
        kafka_bootstrap=kafka_bootstrap,
        ports={
            "gateway": gateway_port,
            "notifier": notifier_port,
            "transcriber": transcriber_port,
            "chunker": chunker_port,
            "embedder": embedder_port,
            "diarizer": diarizer_port,
        },
        whisper_model=whisper_model,
        log_format=log_format,
        color=color and sys.stdout.isatty(),
        dev_sign_in=dev_sign_in,
    )
    raise typer.Exit(asyncio.run(Supervisor(config).run()))


@app.command()
def token(
    user: Annotated[str, typer.Argument(help="Subject (user id) of the token.")],
    admin: bool = False,
    name: str | None = None,
    email: str | None = None,
    ttl_hours: float = 12,
    data_dir: DataDir = Path(".data"),
) -> None:
    """Mint a token with the local dev issuer (the stack's signing key)."""
    issuer = DevIssuer.ensure(data_dir / "auth")
    # Plain print: the token is meant for $(...) and pipes, never wrapped or styled.
    print(issuer.mint(user, admin=admin, name=name, email=email, ttl_s=int(ttl_hours * 3600)))


def _urls(data_dir: Path, gateway: str | None, notifier: str | None) -> tuple[str, str]:
    try:
        info = StackInfo.load(data_dir)
        defaults = (info.gateway_url, info.notifier_url)
    except (OSError, ValueError, TypeError):
        defaults = ("http://127.0.0.1:8000", "http://127.0.0.1:8001")
    return (gateway or defaults[0]).rstrip("/"), (notifier or defaults[1]).rstrip("/")


def _need_token(value: str | None) -> str:
    if not value:
        console.print("[red]No token.[/] Run: export MXW_TOKEN=$(mxw token alice)")
        raise typer.Exit(2)
    return value


def _fail_on_problem(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json() if response.content else None
    try:
        problem = response.json()
        detail = problem.get("detail") or problem.get("title")
    except ValueError:
        detail = response.text
    console.print(f"[red]{response.status_code}[/] {detail}")
    raise typer.Exit(1)


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    model: str | None = None,
    language: str | None = None,
    task: str | None = None,
    word_timestamps: bool = False,
    decoding: Annotated[
        str | None,
        typer.Option(help="batched or sequential; unset: the transcriber's choice."),
    ] = None,
    speakers: Annotated[bool, typer.Option(help="Find who spoke when (the diarizer).")] = False,
    num_speakers: Annotated[
        int | None, typer.Option(help="With --speakers: how many people speak, if known.")
    ] = None,
    hotword: Annotated[
        list[str] | None,
        typer.Option(
            help="A rare name or term said in the recording (repeatable); added before your "
            "vocabulary (GET /vocabulary)."
        ),
    ] = None,
    use_vocabulary: Annotated[
        bool, typer.Option(help="Merge your custom vocabulary into the job's hotwords.")
    ] = True,
    force: bool = False,
    follow: bool = True,
    token: Token = None,
    gateway: Gateway = None,
    notifier: Notifier = None,
    data_dir: DataDir = Path(".data"),
) -> None:
    """Upload an audio file; then follow the job's progress until it finishes."""
    bearer = _need_token(token)
    gateway_url, notifier_url = _urls(data_dir, gateway, notifier)
    form = {
        k: v
        for k, v in {
            "model": model,
            "language": language,
            "task": task,
            "word_timestamps": "true" if word_timestamps else None,
            "decoding": decoding,
            "speakers": "true" if speakers else None,
            "num_speakers": str(num_speakers) if num_speakers is not None else None,
            # One form field, the terms separated by new lines (a term holds no comma).
            "hotwords": "\n".join(hotword) if hotword else None,
            "use_vocabulary": None if use_vocabulary else "false",
            "force": "true" if force else None,
        }.items()
        if v is not None
    }
    with file.open("rb") as fh:
        response = httpx.post(
            f"{gateway_url}/jobs",
            headers={"Authorization": f"Bearer {bearer}"},
            files={"file": (file.name, fh, "application/octet-stream")},
            data=form,
            timeout=httpx.Timeout(30, write=600),
        )
    job = _fail_on_problem(response)
    job_id = str(job["id"])
    console.print(f"job [bold]{job_id}[/] {job.get('state', '')}")
    print(job_id)
    if follow:
        raise typer.Exit(asyncio.run(_follow(notifier_url, job_id, bearer)))


@app.command("follow")
def follow_cmd(
    job_id: str,
    token: Token = None,
    gateway: Gateway = None,
    notifier: Notifier = None,
    data_dir: DataDir = Path(".data"),
) -> None:
    """Show a job's live progress (WebSocket) until it is done, failed or cancelled."""
    _, notifier_url = _urls(data_dir, gateway, notifier)
    raise typer.Exit(asyncio.run(_follow(notifier_url, job_id, _need_token(token))))


async def _follow(notifier_url: str, job_id: str, bearer: str) -> int:
    ws_url = notifier_url.replace("http", "ws", 1) + f"/ws/jobs/{job_id}"
    final: dict[str, Any] = {}
    with Progress(
        TextColumn("[bold]{task.fields[stage]:<10}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[message]}"),
        console=console,
    ) as bar:
        task = bar.add_task("job", total=1.0, stage="queued", message="")
        async with websockets.connect(
            ws_url, additional_headers={"Authorization": f"Bearer {bearer}"}
        ) as ws:
            async for raw in ws:
                event = json.loads(raw)
                bar.update(
                    task,
                    completed=float(event.get("progress") or 0),
                    stage=event.get("stage", ""),
                    message=(event.get("error") or event.get("message") or "")[:60],
                )
                if event.get("state") in TERMINAL:
                    final = event
                    break
    state = final.get("state", "unknown")
    if state == "done":
        console.print(f"[green]done[/] {job_id}")
        return 0
    console.print(f"[red]{state}[/] {job_id}: {final.get('error') or final.get('message') or ''}")
    return 1


@app.command()
def jobs(token: Token = None, gateway: Gateway = None, data_dir: DataDir = Path(".data")) -> None:
    """List your jobs."""
    gateway_url, _ = _urls(data_dir, gateway, None)
    body = _fail_on_problem(
        httpx.get(f"{gateway_url}/jobs", headers={"Authorization": f"Bearer {_need_token(token)}"})
    )
    items = body["items"] if isinstance(body, dict) and "items" in body else body
    for job in items:
        print(f"{job['id']}  {job.get('state', ''):<9} {job.get('filename') or ''}")


@app.command()
def transcript(
    job_id: str, token: Token = None, gateway: Gateway = None, data_dir: DataDir = Path(".data")
) -> None:
    """Print a job's transcript as text."""
    gateway_url, _ = _urls(data_dir, gateway, None)
    response = httpx.get(
        f"{gateway_url}/jobs/{job_id}/transcript.txt",
        headers={"Authorization": f"Bearer {_need_token(token)}"},
    )
    if not response.is_success:
        _fail_on_problem(response)
    out.print(response.text, soft_wrap=True)


@app.command()
def speakers(
    job_id: str,
    name: Annotated[
        list[str] | None,
        typer.Option(help="LABEL=NAME: name a speaker, e.g. SPEAKER_01=Alice (repeatable)."),
    ] = None,
    token: Token = None,
    gateway: Gateway = None,
    data_dir: DataDir = Path(".data"),
) -> None:
    """List a job's speakers (label, name, talk time); name them with --name."""
    gateway_url, _ = _urls(data_dir, gateway, None)
    headers = {"Authorization": f"Bearer {_need_token(token)}"}
    for pair in name or []:
        label, sep, given = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{pair!r} is not LABEL=NAME")
        _fail_on_problem(
            httpx.patch(
                f"{gateway_url}/jobs/{job_id}/speakers/{label}",
                json={"name": given},
                headers=headers,
                timeout=30,
            )
        )
    body = _fail_on_problem(
        httpx.get(f"{gateway_url}/jobs/{job_id}/speakers", headers=headers, timeout=30)
    )
    for speaker in body["speakers"]:
        out.print(f"{speaker['label']}  {speaker['name']}  {_clock(speaker['talk_s'])}")


@app.command()
def search(
    query: str,
    limit: int = 5,
    speaker: Annotated[
        str | None, typer.Option(help="Only what the speaker of this name said.")
    ] = None,
    token: Token = None,
    gateway: Gateway = None,
    data_dir: DataDir = Path(".data"),
) -> None:
    """Search everything you uploaded, by meaning and by words."""
    gateway_url, _ = _urls(data_dir, gateway, None)
    body = _fail_on_problem(
        httpx.get(
            f"{gateway_url}/search",
            params={"q": query, "limit": limit, **({"speaker": speaker} if speaker else {})},
            headers={"Authorization": f"Bearer {_need_token(token)}"},
            timeout=30,
        )
    )
    results = body["results"] if isinstance(body, dict) else body
    if not results:
        console.print("no results")
    for hit in results:
        span = f"{_clock(hit['start_s'])}-{_clock(hit['end_s'])}"
        out.print(
            f"[bold]{hit.get('filename') or hit['job_id']}[/] {span}  {hit.get('topic') or ''}"
        )
        if speaker and hit.get("lines"):
            for line in hit["lines"]:
                out.print(f"  {_clock(line['start_s'])} {line['name']}: {line['text']}")
        else:
            out.print(f"  {hit['text'][:300]}", soft_wrap=True)
        if hit.get("audio_url"):
            out.print(f"  {hit['audio_url']}")


dlq_app = typer.Typer(help="Dead-lettered events (admin): list them, replay them.")
app.add_typer(dlq_app, name="dlq")


def _admin_token(value: str | None, data_dir: Path) -> str:
    """The given token, or on the local stack an admin token from its dev issuer."""
    if value:
        return value
    if (data_dir / "auth" / "dev-signing-key.pem").exists():
        return DevIssuer.ensure(data_dir / "auth").mint("mxw-cli", admin=True, ttl_s=300)
    return _need_token(value)


@dlq_app.command("list")
def dlq_list(
    limit: int = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    token: Token = None,
    gateway: Gateway = None,
    data_dir: DataDir = Path(".data"),
) -> None:
    """Dead-lettered events, newest first, with the reason each one was given up."""
    gateway_url, _ = _urls(data_dir, gateway, None)
    letters = _fail_on_problem(
        httpx.get(
            f"{gateway_url}/admin/dead-letters",
            params={"limit": limit},
            headers={"Authorization": f"Bearer {_admin_token(token, data_dir)}"},
            timeout=30,
        )
    )
    if not letters and not as_json:
        console.print("no dead letters")
    for letter in letters:
        if as_json:
            print(json.dumps(letter))
            continue
        out.print(
            f"[bold]{letter['id']}[/]  job {letter.get('job_id') or '-'}"
            f"  attempts {letter.get('attempts') if letter.get('attempts') is not None else '-'}"
        )
        out.print(f"  {letter.get('error') or ''}", soft_wrap=True)


@dlq_app.command("replay")
def dlq_replay(
    ids: Annotated[list[str], typer.Argument(help="Dead letter ids (from `mxw dlq list`).")],
    token: Token = None,
    gateway: Gateway = None,
    data_dir: DataDir = Path(".data"),
) -> None:
    """Give dead-lettered events another chance: a job that failed at that stage is
    reprocessed from it; anything else is published again."""
    gateway_url, _ = _urls(data_dir, gateway, None)
    bearer = _admin_token(token, data_dir)
    for dead_letter_id in ids:
        result = _fail_on_problem(
            httpx.post(
                f"{gateway_url}/admin/dead-letters/{dead_letter_id}/replay",
                headers={"Authorization": f"Bearer {bearer}"},
                timeout=30,
            )
        )
        job = (result.get("job") or {}).get("id")
        out.print(f"{dead_letter_id}: {result['action']}" + (f" (job {job})" if job else ""))


@app.command("kafka-setup")
def kafka_setup(
    secrets: Annotated[
        Path, typer.Argument(help="Folder of the passwords: <principal>/password each.")
    ],
    outside: Annotated[
        list[str] | None,
        typer.Option("--outside", help="An outside system to give a principal (repeatable)."),
    ] = None,
) -> None:
    """Prepare a secured Kafka cluster as its admin (the MXW_KAFKA_* settings: bootstrap,
    SASL, admin user and password): generate the passwords missing under SECRETS, then
    create the topics, one SCRAM user per service and outside system, and their ACLs.
    Idempotent; what compose's kafka-secrets and kafka-setup do (docs/deploy.md)."""
    from mxw_shared import kafka_setup as setup

    systems = [arg for name in outside or [] for arg in ("--outside", name)]
    setup.main(["secrets", str(secrets), *systems])
    setup.main(["apply", str(secrets), *systems])


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()


if __name__ == "__main__":
    main()
