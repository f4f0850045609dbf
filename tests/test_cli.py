"""The command line: fast start, no TensorFlow for data commands, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import group_raising

from dsb.cli import cli
from dsb.core.errors import BadDataError, EnvironmentProblem


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [["--help"], ["score", "--help"], ["fetch", "--help"], ["validate", "--help"]])
def test_help_does_not_import_keras_or_tensorflow(args):
    code = (
        "import sys\n"
        "from dsb.cli import cli\n"
        f"try:\n    cli.main({args!r}, prog_name='dsb')\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_import_dsb_is_light():
    result = _python("import sys, dsb, dsb.kaggle.rle, dsb.kaggle.metric, dsb.kaggle.submission, dsb.kaggle.fetch, dsb.io.images\n"
                     "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_console_script_help_answers():
    result = subprocess.run([sys.executable, "-m", "dsb", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("fetch", "train", "predict", "score", "validate", "submit", "segment", "report", "tune"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (BadDataError("RLE has an odd number of values", path="sub.csv", where="row 3"), 3,
         "dsb: error: sub.csv: row 3: RLE has an odd number of values"),
        (EnvironmentProblem("no Kaggle credentials"), 4, "dsb: error: no Kaggle credentials"),
        (KeyboardInterrupt("interrupted; resume with dsb train --resume --out runs/x"), 130,
         "dsb: interrupted; resume with dsb train --resume --out runs/x"),
        (RuntimeError("unexpected"), 1, "dsb: internal error: RuntimeError: unexpected"),
    ],
)
def test_errors_become_one_line_and_an_exit_status(exc, code, text):
    result = CliRunner().invoke(group_raising(exc), ["boom"])
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(text)
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback_of_a_bug():
    result = CliRunner().invoke(group_raising(RuntimeError("unexpected")), ["--debug", "boom"])
    assert isinstance(result.exception, RuntimeError)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["score"], "score: usage error: Missing argument 'SUBMISSION'."),
        (["score", "nope.csv", "--truth", "."], "'nope.csv' does not exist"),
        (["train", "--epochs", "0"], "--epochs"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["train", "--data", ".", "--resume", "--out", "runs/x", "--seed", "3"], "--resume continues the run's own config and seed"),
    ],
)
def test_usage_error_is_one_line_and_exits_2(args, needle):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]


def test_help_and_version_exit_0():
    runner = CliRunner()
    assert runner.invoke(cli, ["--help"]).exit_code == 0
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and "dsb, version" in result.stdout
    # Plain `dsb`, a newcomer's first command: the help as --help prints it, not a usage error.
    bare = runner.invoke(cli, [])
    assert bare.exit_code == 0 and bare.stdout == runner.invoke(cli, ["--help"]).stdout
    assert bare.stderr == ""


@pytest.mark.parametrize("command", ["predict", "segment", "evaluate", "tune"])
def test_engine_and_precision_choices_are_the_librarys(command):
    from dsb.network.engines import ENGINE_CHOICES
    from dsb.network.model_folder import PRECISION_CHOICES

    options = {p.name: p for p in cli.commands[command].params}
    assert tuple(options["engine"].type.choices) == ENGINE_CHOICES
    assert tuple(options["precision"].type.choices) == PRECISION_CHOICES


SLOW_COMMAND = """
import sys, time
from pathlib import Path
from dsb.cli import cli
from dsb.core.atomic import atomic_path

@cli.command("slow")
def slow():
    with atomic_path(Path(sys.argv[1]) / "out.csv") as tmp:
        tmp.write_text("half")
        print("writing", flush=True)
        time.sleep(120)

cli(["slow"], prog_name="dsb")
"""


def test_sigterm_stops_a_command_as_ctrl_c_does_and_leaves_no_temporary_file(tmp_path):
    import signal

    process = subprocess.Popen([sys.executable, "-c", SLOW_COMMAND, str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "writing\n"
        assert [p.name for p in tmp_path.iterdir()][0].startswith(".")  # the hidden file being written
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert stderr.splitlines() == ["dsb: terminated (SIGTERM)"]
    assert list(tmp_path.iterdir()) == []


POOL_COMMAND = """
import multiprocessing
from dsb.cli import cli

@cli.command("pool")
def pool():
    with multiprocessing.get_context("fork").Pool(2) as workers:  # leaving it terminates them by SIGTERM
        print(sum(workers.map(abs, [-1, -2, -3])))

cli(["pool"], prog_name="dsb")
"""


def test_forked_workers_ended_by_sigterm_end_silently():
    """A process pool's workers inherit the main process's SIGTERM handler; terminating them printed a
    KeyboardInterrupt traceback for each (dsb prepare's decoding pool)."""
    for _ in range(3):  # the workers' race with the terminate differs from run to run
        result = subprocess.run([sys.executable, "-c", POOL_COMMAND], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout == "6\n"
        assert result.stderr == ""


C_CALL_COMMAND = """
import multiprocessing, time
from dsb.cli import cli

@cli.command("busy")
def busy():
    worker = multiprocessing.get_context("fork").Process(target=sum, args=(range(10**11),))  # one long C call
    worker.start()
    time.sleep(0.5)
    started = time.monotonic()
    worker.terminate()
    worker.join(timeout=20)
    print(worker.exitcode, round(time.monotonic() - started))
    worker.kill()

cli(["busy"], prog_name="dsb")
"""


def test_a_forked_worker_in_a_long_c_call_ends_at_sigterm_at_once():
    """The parent's Python handler runs only between bytecodes: a worker inside one C call outlived its
    terminate until the call returned."""
    result = subprocess.run([sys.executable, "-c", C_CALL_COMMAND], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["-15", "0"]
