"""The grader's sandbox (minildm.course.sandbox) against the attacks of issue 27: each test runs a
small hostile program through ``run_isolated`` and checks that the attack is contained and that
nothing of it is left outside its run."""

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from minildm.app.cli import main
from minildm.config import MinildmError
from minildm.course import cgroups, sandbox
from minildm.course.sandbox import Limits, check_isolation, isolation, run_isolated

ENVIRONMENT = {"PATH": "/usr/bin:/bin"}
KINDS = ("bubblewrap", "namespaces", "none")


@pytest.fixture
def run_folder(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    return folder


@pytest.fixture
def bubblewrap():
    assert isolation() == "bubblewrap", "the grader's sandbox needs bubblewrap (the Debian package .ci/run installs)"


@pytest.fixture(params=KINDS)
def kind(request, monkeypatch):
    """Each isolation this machine offers (bubblewrap required), made the one ``run_isolated`` uses."""
    offered = KINDS[KINDS.index(isolation()):]
    if request.param not in offered:
        assert request.param != "bubblewrap", "the grader's sandbox needs bubblewrap"
        pytest.skip(f"{request.param} cannot run on this machine")
    monkeypatch.setattr(sandbox, "isolation", lambda: request.param)
    return request.param


def python(code: str, folder: Path, **limits) -> tuple[sandbox.RunResult, float]:
    """Run ``code`` with the grader's Python in ``folder``; the result and the seconds it took."""
    started = time.monotonic()
    result = run_isolated([sys.executable, "-c", code], folder, Limits(**limits), ENVIRONMENT)
    return result, time.monotonic() - started


def running(token: str) -> list[psutil.Process]:
    """The live processes whose command line holds ``token``."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE and token in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def test_a_root_grader_s_run_has_no_capability_and_cannot_remount_or_write_outside(bubblewrap, run_folder):
    with tempfile.TemporaryDirectory(dir="/var/tmp") as outside:  # outside /tmp: the host's own files
        victim = Path(outside) / "grades.csv"
        victim.write_text("keep me")
        code = f"""if True:
            import json, subprocess
            status = dict(line.split(":", 1) for line in open("/proc/self/status"))
            remount = subprocess.run(["mount", "-o", "remount,bind,rw", "/"], capture_output=True).returncode
            try:
                open({str(victim)!r}, "w").write("forged")
                wrote = True
            except OSError:
                wrote = False
            open("inside.txt", "w").write("mine")
            print(json.dumps({{"capabilities": int(status["CapEff"], 16), "remount": remount, "wrote": wrote}}))"""
        result, _ = python(code, run_folder)
        report = json.loads(result.output.strip().splitlines()[-1])
        assert report == {"capabilities": 0, "remount": report["remount"], "wrote": False} and report["remount"] != 0
        assert victim.read_text() == "keep me"
    assert (run_folder / "inside.txt").read_text() == "mine"  # the run's own folder stays writable


def test_tmp_and_dev_shm_are_private_to_the_run(bubblewrap, run_folder):
    name = f"minildm-{secrets.token_hex(8)}"
    result, _ = python(f"open('/dev/shm/{name}', 'w').write('x'); open('/tmp/{name}', 'w').write('x'); print('ok')",
                       run_folder)
    assert result.output.strip() == "ok"
    assert not (Path("/dev/shm") / name).exists() and not (Path("/tmp") / name).exists()


def test_a_grader_python_under_tmp_stays_usable(bubblewrap, run_folder, tmp_path, monkeypatch):
    venv = tmp_path / "venv"  # under /tmp, which the sandbox replaces with an empty folder
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    monkeypatch.setattr(sys, "prefix", str(venv))
    result = run_isolated([str(venv / "bin" / "python"), "-c", "import sys; print(sys.prefix)"], run_folder,
                          Limits(), ENVIRONMENT)
    assert result.returncode == 0 and result.output.strip() == str(venv)


def test_hidden_folders_look_empty_but_a_python_inside_one_still_runs(bubblewrap, tmp_path, monkeypatch):
    with tempfile.TemporaryDirectory(dir="/var/tmp") as outside:  # outside /tmp: the host's own files
        checkout, others = Path(outside) / "checkout", Path(outside) / "submissions"
        (checkout / "tests" / "grading").mkdir(parents=True)
        (checkout / "tests" / "grading" / "test_grading.py").write_text("EXPECTED = 42")
        (others / "bob").mkdir(parents=True)
        (others / "bob" / "answer.py").write_text("secret")
        venv = checkout / ".venv"  # the grader's Python inside the checkout it hides
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        monkeypatch.setattr(sys, "prefix", str(venv))
        run_folder = others / "work" / "run"  # the run's own folder may lie inside a hidden one
        run_folder.mkdir(parents=True)
        code = ("import os, sys; print(sys.prefix); print(sorted(os.listdir(sys.argv[1])), "
                "sorted(os.listdir(sys.argv[2])), os.path.exists(sys.argv[3]))")
        result = run_isolated([str(venv / "bin" / "python"), "-c", code, str(checkout), str(others),
                               str(others / "bob" / "answer.py")], run_folder, Limits(), ENVIRONMENT,
                              hide=(checkout, others))
        prefix, listing = result.output.strip().splitlines()
        assert result.returncode == 0 and prefix == str(venv)
        assert listing == "['.venv'] ['work'] False"  # only the mount points of what is shown again
        assert (checkout / "tests" / "grading" / "test_grading.py").read_text() == "EXPECTED = 42"


def test_a_fork_bomb_is_capped_and_leaves_no_process(kind, run_folder):
    token = secrets.token_hex(8)
    code = f"""if True:  # {token}
        import os, resource, time
        print(resource.getrlimit(resource.RLIMIT_NPROC)[0], flush=True)
        forks = 0
        for _ in range(300):
            try:
                if os.fork() == 0:
                    time.sleep(300)
                    os._exit(0)
                forks += 1
            except OSError:
                break
        print(forks, flush=True)
        time.sleep(300)"""
    result, seconds = python(code, run_folder, wall_seconds=4, processes=32)
    cap, forks = (int(line) for line in result.output.split())
    assert result.timed_out and seconds < 4 + 5
    assert not running(token)
    if kind != "none":  # the cap is set inside the run's user namespace
        assert cap == 32
        if os.geteuid() != 0:  # the kernel does not enforce it for root
            assert forks < 32


@pytest.mark.parametrize("detach", ["grandchild", "daemon"])
def test_no_process_of_a_run_outlives_it_and_held_output_does_not_stall(kind, detach, run_folder):
    token = f"300.{secrets.randbelow(10**9)}"  # sleep's argument: names the processes to look for
    spawn = {"grandchild": f"subprocess.Popen(['sleep', '{token}'], start_new_session=True)",  # holds stdout
             "daemon": f"os.setsid() if os.fork() == 0 else os._exit(0); os.execvp('sleep', ['sleep', '{token}'])"}
    code = f"""if True:
        import os, subprocess, time
        if os.fork() == 0:
            {spawn[detach]}
            os._exit(0)
        os.wait()
        time.sleep(0.5)
        print('main done', flush=True)"""
    result, seconds = python(code, run_folder, wall_seconds=20)
    assert not result.timed_out and "main done" in result.output and seconds < 20
    assert not running(token)


def test_a_file_cannot_grow_past_the_size_limit(kind, run_folder):
    code = "f = open('big', 'wb')\nfor _ in range(64): f.write(bytes(2**20)); f.flush()"
    result, _ = python(code, run_folder, file_bytes=2**20)
    assert result.returncode != 0 and (run_folder / "big").stat().st_size <= 2**20


@pytest.mark.parametrize("weaker", ["namespaces", "none"])
def test_grading_refuses_without_bubblewrap_unless_told_unsafe(weaker, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sandbox, "isolation", lambda: weaker)
    with pytest.raises(MinildmError, match="install the Debian package bubblewrap"):
        check_isolation()
    assert check_isolation(unsafe_no_sandbox=True).startswith("warning: grading without bubblewrap")

    (tmp_path / "submissions").mkdir()
    arguments = ["course", "grade", str(tmp_path / "submissions"), "--out", str(tmp_path / "out")]
    assert main(arguments) == 1
    refusal = capsys.readouterr().err
    assert len(refusal.splitlines()) == 1 and "install the Debian package bubblewrap" in refusal
    assert main([*arguments, "--unsafe-no-sandbox"]) == 1  # past the refusal: the folder holds no submissions
    assert "holds no submissions" in capsys.readouterr().err


def test_a_control_group_caps_a_run_s_total_memory_and_processes(kind, run_folder):
    """Four processes of 100 MB each in a run capped at 256 MB in all: the kernel kills some. Forty
    sleepers in a run capped at 16 processes: most cannot start. Then nothing is left, not even
    the groups."""
    group = cgroups.create(2**28, 16)
    if group is None:  # a container without write access to /sys/fs/cgroup: per-process limits only
        pytest.skip("this machine does not let the grader make control groups")
    group.end()
    token = f"4{secrets.randbelow(10**8)}"
    code = f"""if True:
        import subprocess, sys
        hog = "x = b'\\\\x01' * (100 * 2**20); import time; time.sleep(2)"
        children = [subprocess.Popen([sys.executable, '-c', hog]) for _ in range(4)]
        print(sum(child.wait() == 0 for child in children), flush=True)
        started = 0
        for _ in range(40):
            try:
                subprocess.Popen(['sleep', '{token}'])
                started += 1
            except OSError:
                pass
        print(started, flush=True)"""
    before = set(cgroups.CGROUP.rglob("minildm-run-*"))
    result, _ = python(code, run_folder, total_memory_bytes=2**28, processes=16)
    kept, started = (int(line) for line in result.output.split()[-2:])
    assert kept < 4 and started < 16
    assert not running(token) and set(cgroups.CGROUP.rglob("minildm-run-*")) == before
