"""The `kbchat` command line: its options and subcommands (what each does lives in kbchat.cli)."""

from __future__ import annotations

import argparse

from kbchat.config import ALL_METHODS
from kbchat.errors import KbchatError

EXIT_USAGE = 2


class CliError(KbchatError):
    exit_code = EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 through our own handler."""

    def error(self, message: str):  # type: ignore[override]
        raise CliError(f"{' '.join(message.split())} (see `kbchat --help`)")  # one line, whatever was typed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kbchat", description="Chat with a model whose knowledge you can correct.")
    parser.add_argument("--db", help="ledger URL (SQLAlchemy), default: SQLite in the data dir; env KBCHAT_DB")
    parser.add_argument("--model", help="Hugging Face model folder or .gguf file; env KBCHAT_MODEL")
    parser.add_argument("--home", help="data dir; env KBCHAT_HOME")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available); env KBCHAT_DEVICE")
    parser.add_argument("--server", help="talk to a kbchat host (`kbchat serve`) at this URL instead of a local "
                        "model; env KBCHAT_SERVER")
    parser.add_argument("--token", help="the host's bearer token (default: $KBCHAT_TOKEN or the local token file)")
    parser.epilog = "Defaults for these options can be set in the config file: see `kbchat config show`."
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    _host_commands(sub)
    _edit_commands(sub)
    _train_command(sub)
    _chats_command(sub)
    verify = sub.add_parser("verify", help="check ledger rows, deltas and weights against their fingerprints")
    verify.add_argument("--json", action="store_true")
    return parser


def _host_commands(sub) -> None:
    """config, serve, bench, export: about the installation rather than one edit."""
    config = sub.add_parser("config", help="where the config file is and the settings in effect")
    config.add_argument("action", choices=["path", "show"], help="path: the file's path; show: every setting "
                        "and where it came from (default, file, env or flag)")
    config.add_argument("--json", action="store_true")

    serve = sub.add_parser("serve", help="serve chat (OpenAI-compatible) and the edit API over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-auth", action="store_true", help="no token (loopback addresses only)")
    serve.add_argument("--backend", choices=["local", "openai"], default="local",
                       help="local: the model in this process; openai: an OpenAI-compatible engine behind")
    serve.add_argument("--base-url", help="the engine's URL with --backend openai (e.g. a vLLM server)")
    serve.add_argument("--engine-model", help="model name at the engine (default: its first listed model)")

    bench = sub.add_parser("bench", help="benchmark a method on CounterFact or zsRE data")
    bench.add_argument("--data", required=True, help="CounterFact (ROME or EasyEdit layout) or zsRE (MEND) JSON")
    bench.add_argument("--method", choices=ALL_METHODS, required=True)
    bench.add_argument("--limit", type=int, default=None)
    bench.add_argument("--sequential", action="store_true", help="keep every edit; re-check them all at the end")
    bench.add_argument("--chat", action="store_true", help="chat mode: each edit typed as SUBJECT → FACT, then "
                       "asked as chat questions (wordings, follow-up, neighbours, canaries, names, fluency)")
    bench.add_argument("--json", action="store_true")

    export = sub.add_parser("export", help="write the edited model as a Hugging Face checkpoint or a LoRA adapter")
    export.add_argument("folder")
    export.add_argument("--format", choices=["checkpoint", "lora"], default="checkpoint",
                        help="checkpoint: the whole edited model (default); lora: the weight edits as a PEFT "
                             "LoRA adapter on the base model (for vLLM --enable-lora)")


def _edit_commands(sub) -> None:
    """ask, edit, parse, edits, revert, audit/show, commit."""
    ask = sub.add_parser("ask", help="ask a question")
    ask.add_argument("text")
    ask.add_argument("--no-memory", action="store_true", help="answer from the weights alone")
    ask.add_argument("--max-tokens", type=int, default=None)
    ask.add_argument("--chat", help="ask in saved chat ID (earlier turns go to the model; the answer is saved); "
                     "`new` starts one")
    ask.add_argument("--json", action="store_true")

    edit = sub.add_parser("edit", help='correct a fact: "SUBJECT → FACT" or "SUBJECT | PROMPT | TARGET"')
    edit.add_argument("text")
    edit.add_argument("--method", choices=ALL_METHODS, default=None, help="default: serac (memory)")
    edit.add_argument("--probe", action="append", default=[], help="a portability probe (repeatable)")
    edit.add_argument("--hparams", help="JSON object of hyperparameter overrides for weight methods")
    edit.add_argument("--no-audit", action="store_true", help="skip the metric checks (run them later never)")
    edit.add_argument("--json", action="store_true")

    parse = sub.add_parser("parse", help="show how an /edit text would be understood, without editing")
    parse.add_argument("text")
    parse.add_argument("--json", action="store_true")

    edits = sub.add_parser("edits", help="list edits")
    edits.add_argument("--status", default=None)
    edits.add_argument("--json", action="store_true")

    revert = sub.add_parser("revert", help="undo an active edit")
    revert.add_argument("id", type=int)
    revert.add_argument("--json", action="store_true")

    audit = sub.add_parser("audit", aliases=["show"], help="one edit with its checks")
    audit.add_argument("id", type=int)
    audit.add_argument("--json", action="store_true")

    commit = sub.add_parser("commit", help="write the active memory edits into the weights (MEMIT)")
    commit.add_argument("--json", action="store_true")


def _train_command(sub) -> None:
    train = sub.add_parser("train-editor", help="train a MEND or InstructEdit editor for the model (hours on CPU)")
    train.add_argument("--method", choices=["mend", "instructedit"], required=True)
    train.add_argument("--steps", type=int, default=2000)
    train.add_argument("--out", help="editor file (default: <data dir>/editors/<method>-<model name>.safetensors)")
    train.add_argument("--resume", action="store_true", help="carry on from the state file beside --out")
    train.add_argument("--tasks", nargs="+", default=["counterfact", "qa", "chat"],
                       help="tasks to train on: counterfact, qa, chat (default: all three)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--data", help="the shared data dir (default: ../shared/data beside the checkout)")
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--val-every", type=int, default=50)
    train.add_argument("--val-size", type=int, default=48)
    train.add_argument("--rank", type=int, default=None, help="the editor's inner rank (default: the model's)")
    train.add_argument("--c-loc", type=float, default=None, help="weight of the locality KL (default 1.0)")
    train.add_argument("--c-edit", type=float, default=None, help="weight of the edit loss (default 0.1)")
    train.add_argument("--lr", type=float, default=None, help="Adam's rate for the editor networks (default 1e-4)")
    train.add_argument("--alpha-lr", type=float, default=None, help="Adam's rate for the log steps (default 1e-2)")
    train.add_argument("--at-subject", action="store_true",
                       help="experimental: the editor acts where the subject is read (its last token, the "
                            "locate-then-edit layers' output matrices, keys whitened as ROME's)")
    train.add_argument("--json", action="store_true")


def _chats_command(sub) -> None:
    chats = sub.add_parser("chats", help="saved conversations: list (default), show, search, export, rename, delete")
    chats.add_argument("--json", action="store_true")
    actions = chats.add_subparsers(dest="chats_action", parser_class=_Parser)
    quiet = argparse.SUPPRESS  # a sub-command's --json must not reset the one given before it
    actions.add_parser("list", help="every chat, the most recent first").add_argument(
        "--json", action="store_true", default=quiet)
    show = actions.add_parser("show", help="one chat with each answer's provenance")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true", default=quiet)
    search = actions.add_parser("search", help="messages of any chat containing TEXT")
    search.add_argument("text")
    search.add_argument("--limit", type=int, default=50)
    search.add_argument("--json", action="store_true", default=quiet)
    export = actions.add_parser("export", help="a chat as Markdown or JSON (with provenance)")
    export.add_argument("id", type=int)
    export.add_argument("--format", choices=["md", "json"], default="md")
    export.add_argument("-o", "--output", help="file to write (default: standard output)")
    rename = actions.add_parser("rename", help="give a chat a title")
    rename.add_argument("id", type=int)
    rename.add_argument("title")
    rename.add_argument("--json", action="store_true", default=quiet)
    delete = actions.add_parser("delete", help="delete a chat and its messages (needs --yes)")
    delete.add_argument("id", type=int)
    delete.add_argument("--yes", action="store_true", help="really delete it")
    delete.add_argument("--json", action="store_true", default=quiet)
