"""deploy/systemd: the weekly `acmebox gc` timer (off until enabled) and its service, checked by
systemd's own parser, and the command it runs parsed by acmebox's."""

from __future__ import annotations

import configparser
import shlex
import subprocess
from pathlib import Path

from acmebox.cli import build_parser

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def test_systemd_accepts_the_units() -> None:
    done = subprocess.run(["systemd-analyze", "verify", str(UNITS / "acmebox-gc.service"),
                           str(UNITS / "acmebox-gc.timer")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    calendar = unit("acmebox-gc.timer")["Timer"]["OnCalendar"]
    done = subprocess.run(["systemd-analyze", "calendar", calendar], capture_output=True, text=True)
    assert done.returncode == 0 and "Next elapse" in done.stdout, done.stderr


def test_the_timer_is_what_starts_the_service() -> None:
    timer = unit("acmebox-gc.timer")
    assert timer["Install"]["WantedBy"] == "timers.target"  # enabling it is the operator's step
    assert "Unit" not in timer["Timer"]  # so it starts acmebox-gc.service, its namesake
    assert unit("acmebox-gc.service")["Service"]["Type"] == "oneshot"
    assert "Install" not in unit("acmebox-gc.service")  # nothing starts it but the timer


def test_the_service_runs_a_gc_acmebox_understands() -> None:
    exec_start = unit("acmebox-gc.service")["Service"]["ExecStart"].replace("\\\n", " ")
    argv = shlex.split(exec_start)
    assert argv[:2] == ["/bin/sh", "-c"]
    command = shlex.split(argv[2].replace("\\\n", " "))
    assert command[0] == "exec" and command[1].endswith("/.venv/bin/acmebox") and command[2] == "gc"
    args = build_parser().parse_args(command[2:])  # unknown flags would exit 2 here
    assert args.command == "gc"
    assert str(args.registry_storage) == "data/registry"
    assert args.registry_command.startswith("docker compose -p $COMPOSE_PROJECT run --rm --no-deps -T registry")
    assert args.registry_command.endswith("garbage-collect /etc/distribution/config.yml")  # registry:3's path
    assert not args.delete_untagged  # removing untagged manifests is asked for, never scheduled by default
