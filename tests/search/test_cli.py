"""The command line itself: --version, --debug after the verb, a closed pipe."""

import subprocess
import sys

from longrope.search.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert out.startswith("longrope ") and out.strip().split()[1][0].isdigit()


def test_debug_is_accepted_after_the_verb(tmp_path, capsys):
    missing = str(tmp_path / "missing.toml")
    assert main(["config", missing]) == 2  # one line, no traceback
    assert "does not exist" in capsys.readouterr().err
    for argv in (["config", missing, "--debug"], ["--debug", "config", missing]):
        try:
            main(argv)
        except Exception as e:  # --debug re-raises the error with its traceback
            assert "does not exist" in str(e)
        else:
            raise AssertionError(f"{argv} did not raise")


def test_a_reader_that_leaves_early_is_no_error():
    """`longrope config | head -c0`: exit 141 (SIGPIPE's code), nothing on stderr."""
    p = subprocess.Popen([sys.executable, "-m", "longrope.search", "config"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == ""
