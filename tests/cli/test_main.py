"""The console script's contract: every command and flag of docs/design.md parses; errors exit 2."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from imgae_dx.cli import build_parser

CONTRACT = [
    ["sample-data", "OUT", "--images-per-stage", "5", "--stages", "2", "--seed", "1"],
    ["setup-kaggle", "--api-key-path", "kaggle.json"],
    ["stream", "--source", "x.zip", "--stages", "images_001", "--split", "test",
     "--image-size", "64", "--limit", "10", "--json"],
    ["train", "--config", "c.yaml", "--source", "s", "--stages", "all", "--epochs-per-stage", "2",
     "--model", "all", "--image-size", "64", "--batch-size", "8", "--out", "r", "--resume",
     "--device", "cpu", "--logger", "jsonl"],
    ["evaluate", "--run", "r", "--source", "s", "--stages", "images_001"],
    ["report", "r"],
    ["notebook", "--out", "n.ipynb"],
    ["demo", "--out", "d"],
]


@pytest.mark.parametrize("argv", CONTRACT, ids=lambda a: a[0])
def test_contract_parses(argv):
    args = build_parser().parse_args(argv)
    assert args.command == argv[0]


def test_help_and_version_run_without_torch():
    out = subprocess.run([sys.executable, "-c",
                          "import sys; from imgae_dx.cli import main; "
                          "sys.argv=['imgae-dx','--help'];\ntry: main()\nexcept SystemExit: pass\n"
                          "print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert "sample-data" in out.stdout
    assert out.stdout.strip().endswith("False")


def test_bad_flag_value_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "--model", "vae"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_flag_of_every_subcommand_has_a_help_line():
    """A new flag without help fails here (argparse shows it bare in --help)."""
    commands = _subcommands()
    assert {"train", "evaluate", "predict", "export", "stream", "sample-data"} <= set(commands)
    bare = [f"{name} {a.option_strings[0] if a.option_strings else a.dest}"
            for name, parser in commands.items() for a in parser._actions
            if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    top = [a.option_strings[0] for a in build_parser()._actions
           if a.option_strings and not isinstance(a, argparse._HelpAction) and not a.help]
    assert bare + top == [], f"flags without a help line: {bare + top}"


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_the_commands_users_run_most_show_examples(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    examples = text.split("examples:", 1)[1].splitlines()
    runs = [line for line in examples if line.strip().startswith(f"imgae-dx {command} ")]
    assert len(runs) >= 2, text
    for line in runs:  # each example parses
        argv = line.split("#")[0].split()[1:]
        build_parser().parse_args([a.strip("'") for a in argv])
