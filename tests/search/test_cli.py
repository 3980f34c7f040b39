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


def test_ray_address_beats_the_address_a_runs_config_froze(tmp_path, monkeypatch):
    """A run started with --address froze that head in its config; resumed by `ray job submit` on a
    new cluster (RAY_ADDRESS set), it probed the old head and stopped. --address > RAY_ADDRESS >
    the config's workers.address."""
    from longrope.runs import Run
    from longrope.search import config, driver

    cfg = config.from_dict({"model": {"path": "synthetic"}, "workers": {"backend": "ray", "address": "10.9.9.9:6379"}})
    Run.create(tmp_path / "run", config.dumps(cfg))
    seen = []
    monkeypatch.setattr(driver, "run_search", lambda cfg, *a, **k: seen.append(cfg.workers.address) or {})
    monkeypatch.setenv("RAY_ADDRESS", "10.1.1.1:6379")
    assert main(["resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["resume", str(tmp_path / "run"), "--quiet", "--address", "10.2.2.2:6379"]) == 0
    monkeypatch.delenv("RAY_ADDRESS")
    assert main(["resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert seen == ["10.1.1.1:6379", "10.2.2.2:6379", "10.9.9.9:6379"]


def test_the_gpu_trip_scripts_use_names_and_options_that_exist():
    """search/results/gpu/ waits for the next lent GPU, and a trip costs minutes of a 15-minute
    budget: an import renamed or an option dropped since the scripts were written must fail here,
    not there."""
    import argparse
    import importlib
    import re
    from pathlib import Path

    from longrope.search.cli import build_parser

    verbs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    scripts = sorted(Path(__file__).parents[2].joinpath("search/results/gpu").glob("*.[ps][yh]"))
    checked = 0
    for f in scripts:
        text = f.read_text()
        for mod, names in re.findall(r"^\s*from (longrope\.[\w.]+) import ([\w, ]+?)(?: as \w+)?\s*$", text, re.M):
            module = importlib.import_module(mod)
            for name in (n.strip() for n in names.split(",")):
                assert hasattr(module, name), f"{f.name}: {mod} has no {name}"
                checked += 1
        for verb, rest in re.findall(r"\blongrope (\w+)((?: [^;|&>\n]*)?)", text):
            if verb not in verbs:
                continue  # prose ("longrope check on $DEV")
            known = {o for a in verbs[verb]._actions for o in a.option_strings}
            for option in re.findall(r"(?<!\S)(--[\w-]+)", rest):
                assert option in known, f"{f.name}: longrope {verb} has no {option}"
                checked += 1
    assert checked > 40


def test_the_gpu_trip_scripts_configs_are_valid_configs():
    """The TOML each trip script writes (a heredoc with shell variables) must still load: a key
    renamed since is an error on the GPU, minutes into a trip."""
    import re
    import tomllib
    from pathlib import Path

    from longrope.search import config

    given = {"DEV": "cuda", "L1": "16384", "L2": "32768", "L": "16384", "N": "10"}  # set by each script
    seen = 0
    for f in sorted(Path(__file__).parents[2].joinpath("search/results/gpu").glob("*.sh")):
        text = f.read_text()
        values = {**given, **dict(re.findall(r"\b(\w+)=\$\{\w+:-([^}]*)\}", text))}  # X=${X:-default}
        bodies = re.findall(r"cat > \S+\.toml <<T\n(.*?)\nT\n", text, re.S)
        bodies += [b.encode().decode("unicode_escape") for b in re.findall(r"printf '([^']*)' > \S+\.toml", text)]
        for body in bodies:
            body = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), body)
            body = re.sub(r"\$(\w+)", lambda m, v=values: v[m.group(1)], body)
            config.validate(config.from_dict(tomllib.loads(body)))
            seen += 1
    assert seen >= 5
