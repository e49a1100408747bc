"""The `e2ee` command line's parser (e2ee_host.cli), without a service: every option says what it
is for, the global options work on either side of the subcommand, `--version` is the installed
package's, and every `e2ee ...` command in the docs' code blocks parses with the real parser."""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from e2ee_host import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _parsers(parser: argparse.ArgumentParser, path: str = "e2ee") -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, "%s %s" % (path, name))
    return found


def test_every_option_argument_and_subcommand_has_help() -> None:
    missing = []
    for path, parser in _parsers(cli._parser()):
        for action in parser._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append("%s: %s" % (path, "/".join(action.option_strings) or action.dest))
            if isinstance(action, argparse._SubParsersAction):
                described = {a.dest for a in action._choices_actions if a.help}
                missing += ["%s %s: no help" % (path, name) for name in action.choices if name not in described]
    assert not missing, missing


def test_every_command_takes_the_global_options() -> None:
    leaves = [(path, p) for path, p in _parsers(cli._parser())
              if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]
    assert len(leaves) > 30
    for path, parser in leaves:
        options = {s for a in parser._actions for s in a.option_strings}
        assert {"--url", "--api-key", "--json"} <= options, path


def test_the_usage_summary_names_every_command() -> None:
    # e2ee_host.cli's docstring is the command list docs/provisioning.md and --help point to
    leaves = [path for path, p in _parsers(cli._parser())
              if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]
    assert [path for path in leaves if "\n    %s " % path not in cli.__doc__] == []


@pytest.mark.parametrize("argv", [
    ["--url", "http://svc:1", "--api-key", "K", "--json", "devices", "list", "--owner", "acme"],
    ["devices", "list", "--owner", "acme", "--url", "http://svc:1", "--api-key", "K", "--json"],
    ["devices", "--json", "list", "--url", "http://svc:1", "--owner", "acme", "--api-key", "K"],
    ["--json", "devices", "list", "--api-key", "K", "--url", "http://svc:1", "--owner", "acme"],
])
def test_global_options_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = cli._parser().parse_args(argv)
    assert (args.url, args.api_key, args.json, args.owner) == ("http://svc:1", "K", True, "acme")


def test_global_options_default_when_absent_and_after_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2EE_URL", "http://from-env:2")
    args = cli._parser().parse_args(["client", "send", "--dir", "d", "valve-7", "hi"])
    assert (args.url, args.api_key, args.json) == ("http://from-env:2", None, False)
    args = cli._parser().parse_args(["--url", "http://before:3", "client", "send", "--dir", "d", "--url",
                                     "http://after:4", "valve-7", "hi"])
    assert args.url == "http://after:4" and args.peer == "valve-7" and args.text == "hi"


def test_version_is_the_installed_package_version() -> None:
    out = subprocess.run([sys.executable, "-m", "e2ee_host.cli", "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "e2ee %s" % metadata.version("e2ee-iot")


def test_an_unreachable_service_is_not_called_a_refusal(capsys: pytest.CaptureFixture[str]) -> None:
    # port 9 (discard) on loopback: nothing listens, the connection is refused at once
    assert cli.main(["devices", "list", "--url", "http://127.0.0.1:9", "--api-key", "K"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("e2ee: the service at http://127.0.0.1:9 is unreachable: "), err
    assert "refused: 0" not in err and "Connection refused" in err


def _doc_commands() -> list[tuple[str, str]]:
    """(file:line, command) for each `e2ee ...` command line in a fenced code block of the
    README and docs/*.md (continuation lines joined, comments and redirections left off)."""
    found = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        fence = False
        i = 0
        while i < len(lines):
            number, line = i + 1, lines[i]
            i += 1
            if line.lstrip().startswith("```"):
                fence = not fence
                continue
            while fence and line.endswith("\\") and i < len(lines):
                line = line[:-1] + " " + lines[i].strip()
                i += 1
            # a command starts the line (after a prompt or VAR=value assignments) or follows && ; |
            m = re.match(r"^\s*(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(e2ee\s.*)$", line) if fence else None
            if m:
                found.append(("%s:%d" % (doc.relative_to(ROOT), number), m.group(1)))
    return found


def _tokens(command: str) -> list[str]:
    words = shlex.split(command, comments=True)[1:]
    for stop in ("<", ">", "|", "&&", ";", "2>&1"):
        if stop in words:
            words = words[:words.index(stop)]
    # an optional part in brackets is parsed as if given
    return [w.strip("[]") for w in words if w.strip("[]")]


def test_the_docs_have_commands_to_check() -> None:
    commands = _doc_commands()
    assert len(commands) >= 20
    assert {c.split()[1] for _, c in commands} >= {"client", "claims", "devices", "dev"}


@pytest.mark.parametrize("where,command", _doc_commands())
def test_every_command_in_the_docs_parses(where: str, command: str) -> None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = cli._parser().parse_args(_tokens(command))
    except SystemExit:
        pytest.fail("%s: `%s` does not parse: %s" % (where, command, err.getvalue().strip().splitlines()[-1]))
    assert getattr(args, "run", None) or getattr(args, "board", None), (where, command)
