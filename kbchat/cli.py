"""The `kbchat` command. Every command talks to a `ChatService` (the local engine); errors become one
line on stderr and a non-zero exit code.

The global options come from, strongest first: the flag, its KBCHAT_* variable, the config file
(`kbchat config path`), the default; `kbchat config show` tells which one each setting came from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from kbchat.cli_args import EXIT_USAGE, CliError, build_parser  # noqa: F401  (EXIT_USAGE: part of the CLI API)
from kbchat.cli_chats import answer_json, ask_in_chat, chats_command
from kbchat.config import Config, resolve
from kbchat.errors import KbchatError
from kbchat.records import EditRecord, Progress, ProgressFn
from kbchat.service import ChatService


def _stderr_progress(enabled: bool) -> ProgressFn:
    def report(p: Progress) -> None:
        if enabled and p.message:
            print(f"\r\033[K{p.message}", end="", file=sys.stderr, flush=True)

    return report


def _print_edit(record: EditRecord, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record.to_json(), ensure_ascii=False))
        return
    print(f"#{record.id} [{record.status}] {record.method}: {record.subject} | {record.prompt} | {record.target}")
    if record.notes:
        print(f"    {record.notes}")
    for c in record.checks:
        mark = "pass" if c.passed else ("fail" if c.passed is False else "pending")
        print(f"    {c.metric:<14} {c.mode:<15} {mark:<7} {c.probe}")


GLOBAL_FLAGS = ("db", "model", "home", "device", "server", "token")


def run(argv: Sequence[str], open_chat: Callable[..., object] | None = None) -> int:
    """Run one command; returns the exit code. `open_chat(db=, model=, home=, device=, progress=)`."""
    args = build_parser().parse_args(list(argv))
    config = resolve({name: getattr(args, name) for name in GLOBAL_FLAGS})
    if args.command == "config":
        return _config(config, args)
    for name in GLOBAL_FLAGS:  # flag, else env, else file; None keeps the callee's own default
        setattr(args, name, config.given(name))
    args.config = config
    opener = open_chat or _opener(args)
    if args.command is None:
        _run_tui(lambda progress: opener(db=args.db, model=args.model, home=args.home, device=args.device,
                                         progress=progress), config.given("theme"))
        return 0
    if args.command == "serve":
        return _serve(args, opener)
    if args.command == "train-editor":
        return _train_editor(args)
    interactive = sys.stderr.isatty()
    chat = opener(db=args.db, model=args.model, home=args.home, device=args.device,
                  progress=_stderr_progress(interactive))
    if interactive:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    try:
        for problem in chat.problems():
            print(f"kbchat: warning: {problem}", file=sys.stderr)
        return _dispatch(chat, args)
    finally:
        chat.close()


def _dispatch(chat: ChatService, args) -> int:
    command = COMMANDS.get(args.command)
    if command is None:
        raise CliError(f"unknown command {args.command!r}")
    return command(chat, args)


def _run_tui(open_service: Callable[..., object], theme: str | None) -> None:
    if theme is None:
        from kbchat.tui import run as run_tui

        run_tui(open_service)
        return
    from kbchat.tui.app import KbchatApp

    app = KbchatApp(open_service)
    if theme not in app.available_themes:
        raise CliError(f"unknown theme {theme!r} (from the config file or $KBCHAT_THEME); "
                       f"choose one of: {', '.join(sorted(app.available_themes))}")
    app.theme = theme
    app.run()


def _config(config: Config, args) -> int:
    if args.action == "path":
        print(json.dumps({"path": str(config.path), "exists": config.path.is_file()}) if args.json
              else config.path)
        return 0
    print(json.dumps(config.to_json()) if args.json else "\n".join(config.lines()))
    return 0


def _ask(chat: ChatService, args) -> int:
    args.max_tokens = args.max_tokens or args.config.given("max_tokens")
    if args.chat is not None:
        stream = ask_in_chat(chat, args)
    else:
        stream = chat.stream(args.text, memory=not args.no_memory, max_new_tokens=args.max_tokens)
    if args.json:
        print(json.dumps(answer_json(stream.result())))
        return 0
    for piece in stream:
        print(piece, end="", flush=True)
    print()
    if stream.answer and stream.answer.dropped:
        print(f"[{stream.answer.dropped} earlier turn(s) left out: they do not fit in the model's context]",
              file=sys.stderr)
    if stream.answer and stream.answer.used_edits:
        used = ", ".join(f"#{i}" for i in stream.answer.used_edits)
        print(f"[memory: edit {used}]", file=sys.stderr)
    return 0


def _parse(chat: ChatService, args) -> int:
    parsed = chat.parse(args.text)
    if args.json:
        print(json.dumps({"subject": parsed.subject, "prompt": parsed.prompt, "target": parsed.target}))
    else:
        print(f"subject: {parsed.subject}\nprompt:  {parsed.prompt}\ntarget:  {parsed.target}")
    return 0


def _edit(chat: ChatService, args) -> int:
    hparams = _json_object(args.hparams) if args.hparams else None
    # The CLI prints the checks, so it waits for them (or skips them with --no-audit).
    method = args.method or args.config.given("method")  # a host has its own default otherwise
    record = chat.edit(args.text, method=method, probes=args.probe, hparams=hparams,
                       progress=_stderr_progress(sys.stderr.isatty()), audit="off" if args.no_audit else "wait")
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr)
    _print_edit(record, args.json)
    return 0


def _edits(chat: ChatService, args) -> int:
    records = chat.edits(status=args.status)
    if args.json:
        print(json.dumps([r.to_json() for r in records], ensure_ascii=False))
        return 0
    for r in records:
        _print_edit(r, False)
    if not records:
        print("no edits yet: add one with `kbchat edit \"SUBJECT → FACT\"`")
    return 0


def _one_edit(chat: ChatService, args) -> int:
    record = chat.revert(args.id) if args.command == "revert" else chat.get_edit(args.id)
    _print_edit(record, args.json)
    return 0


def _commit(chat: ChatService, args) -> int:
    records = chat.commit(progress=_stderr_progress(sys.stderr.isatty()))
    if args.json:
        print(json.dumps([r.to_json() for r in records], ensure_ascii=False))
    else:
        for r in records:
            _print_edit(r, False)
    return 0


def _bench(chat: ChatService, args) -> int:
    from kbchat.engine.local import LocalEngine
    from kbchat.evaluation.runner import run_bench
    from kbchat.evaluation.tables import format_table

    if not isinstance(chat, LocalEngine):
        raise CliError("bench needs the model in this process: run it without --server")
    if args.chat:
        return _chat_bench(chat, args)
    result = run_bench(chat, args.data, args.method, limit=args.limit, sequential=args.sequential,
                       progress=_stderr_progress(sys.stderr.isatty()))
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr)
    print(json.dumps(result.to_json()) if args.json else format_table(result))
    return 0


def _chat_bench(engine, args) -> int:
    from kbchat.evaluation.answer_fluency import answer_nll
    from kbchat.evaluation.chat import run_chat_bench
    from kbchat.evaluation.datasets import load_cases
    from kbchat.evaluation.tables import format_chat_table

    try:
        cases = load_cases(args.data, limit=args.limit, skip_unusable=True)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read benchmark data {args.data}: {exc}") from exc
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if sys.stderr.isatty() else (lambda _: None)
    result = run_chat_bench(engine, cases, args.method, answer_nll(engine.runtime), log=log,
                            sequential=args.sequential)
    print(json.dumps(result) if args.json else format_chat_table(result))
    return 0


def _export(chat: ChatService, args) -> int:
    folder = chat.export(args.folder, format=args.format)
    print(f"exported {'a LoRA adapter ' if args.format == 'lora' else ''}to {folder}")
    return 0


def _verify(chat: ChatService, args) -> int:
    problems = chat.verify()
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems}))
    else:
        print("\n".join(problems) if problems else "ok: ledger, deltas and weights match their fingerprints")
    return 1 if problems else 0


COMMANDS: dict[str, Callable[[ChatService, argparse.Namespace], int]] = {
    "ask": _ask, "parse": _parse, "edit": _edit, "edits": _edits, "revert": _one_edit, "audit": _one_edit,
    "show": _one_edit, "commit": _commit, "bench": _bench, "export": _export, "verify": _verify,
    "chats": chats_command,
}


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--hparams is not valid JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise CliError("--hparams must be a JSON object, e.g. '{\"layer\": 5}'")
    return value


def _opener(args) -> Callable[..., object]:
    """How this invocation reaches a ChatService: a local LocalEngine, or a host with --server."""
    if args.server:
        def remote(**kwargs):
            from kbchat.remote import RemoteChat

            return RemoteChat.connect(args.server, args.token, home=kwargs.get("home"),
                                      progress=kwargs.get("progress") or (lambda _: None))

        return remote

    def local(**kwargs):
        from kbchat.engine.local import LocalEngine

        return LocalEngine.open(settings=args.config.engine_settings(), **kwargs)

    return local


def _train_editor(args) -> int:
    from kbchat.training.command import TrainOptions, run_training, usage_hint

    if args.server:
        raise CliError("train-editor trains on the local model; drop --server")
    summary = run_training(TrainOptions(
        method=args.method, model=args.model, home=args.home, device=args.device, steps=args.steps, out=args.out,
        resume=args.resume, tasks=tuple(args.tasks), seed=args.seed, threads=args.threads, data=args.data,
        batch_size=args.batch_size, val_every=args.val_every, val_size=args.val_size, rank=args.rank,
        c_edit=args.c_edit, c_loc=args.c_loc, lr=args.lr, alpha_lr=args.alpha_lr, at_subject=args.at_subject,
        quiet=False))
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        best = summary["best_val"]
        print(f"best step {summary['best_step']}: validation edit success {best['success']:.2f}, "
              f"edit loss {best['edit']:.3f}, locality KL {best['loc']:.4f} ({summary['seconds']:.0f} s)")
        print(usage_hint(summary["out"], args.method))
    return 0


def _serve(args, opener) -> int:
    from kbchat.server.run import serve

    if args.server:
        raise CliError("serve runs the host itself; drop --server")
    if args.backend == "openai":
        if not args.base_url:
            raise CliError("--backend openai needs --base-url (the engine's URL, e.g. http://gpu:8001/v1)")
        from kbchat.server.openai_backend import OpenAIBackendChat

        def open_service(progress):
            return OpenAIBackendChat.open(args.base_url, model=args.engine_model, db=args.db, home=args.home,
                                          device=args.device, progress=progress)
    else:
        def open_service(progress):
            return opener(db=args.db, model=args.model, home=args.home, device=args.device, progress=progress)

    serve(open_service, host=args.host, port=args.port, token=args.token, no_auth=args.no_auth, home=args.home,
          progress=_stderr_progress(sys.stderr.isatty()),
          notice=lambda line: print(line, file=sys.stderr, flush=True))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: everything is local
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Libraries' deprecation notices are for developers; a user's terminal gets kbchat's own lines only.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        code = run(sys.argv[1:] if argv is None else argv)
    except KbchatError as exc:
        print(f"kbchat: error: {' '.join(str(exc).split())}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("kbchat: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
