"""The console script's contract: every DESIGN.md command and flag parses; errors exit 2."""

from __future__ import annotations

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
