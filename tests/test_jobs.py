"""The job graph every pipeline runs on (llava_plugin.jobs)."""
import json
import sys

from llava_plugin.jobs import Job, run_jobs


def test_job_graph_runs_in_dependency_order_reuses_and_skips_after_failure(tmp_path):
    """A job starts after its dependencies, a finished job (its `done` file) is reused,
    and a failure names its log and skips what depends on it, while independent jobs still run."""
    def touch(path, *, fail=False, after=None):
        code = (f"import pathlib, sys; assert {after is None} or pathlib.Path({str(after)!r}).exists(); "
                f"pathlib.Path({str(path)!r}).write_text('ok'); sys.exit({int(fail)})")
        return [sys.executable, "-c", code]

    a, b, c, d, e = (tmp_path / n for n in "abcde")
    e.write_text("already there")
    jobs = [
        Job("b", touch(b, after=a), b, ["a"]),
        Job("a", touch(a), a),
        Job("c", touch(c, fail=True), c),
        Job("d", touch(d), d, ["c"]),
        Job("e", touch(e), e),
    ]
    status = run_jobs(jobs, tmp_path / "study", parallel=2, desc="test")
    assert status == {"a": "done", "b": "done", "c": "failed", "d": "skipped", "e": "reused"}
    assert not d.exists() and e.read_text() == "already there"
    rows = [json.loads(line) for line in (tmp_path / "study" / "jobs.jsonl").read_text().splitlines()]
    assert sorted(r["job"] for r in rows) == ["a", "b", "c"]
    assert (tmp_path / "study" / "logs" / "c.log").read_text().startswith("$ ")


def test_jobs_run_as_their_own_process_groups_and_failures_name_their_error(tmp_path, monkeypatch, capsys):
    """A study launched from a process that already joined a group (a test session that ran a trainer
    in-process) must not hand its rendezvous to the jobs: every trainer would try to bind that one port.
    A failed job's message carries its log's last line, the error itself."""
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    done = tmp_path / "clean"
    code = (f"import os, pathlib, sys; leaked = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_PORT') if k in os.environ]; "
            f"sys.exit('inherited ' + ' '.join(leaked)) if leaked else pathlib.Path({str(done)!r}).write_text('ok')")
    fails = [sys.executable, "-c", "import sys; print('working'); sys.exit('bad flag --x: use --y')"]
    status = run_jobs([Job("clean", [sys.executable, "-c", code], done), Job("fails", fails, tmp_path / "never")],
                      tmp_path / "study", parallel=2, desc="test")
    assert status == {"clean": "done", "fails": "failed"}
    assert "fails failed (exit 1): bad flag --x: use --y; its log:" in capsys.readouterr().err


def test_jobs_record_their_cpu_seconds(tmp_path):
    """jobs.jsonl has each job's CPU time besides its wall time (a core shared with others slows the wall)."""
    burn = [sys.executable, "-c", f"import pathlib; sum(range(10**7)); pathlib.Path({str(tmp_path / 'x')!r}).touch()"]
    assert run_jobs([Job("burn", burn, tmp_path / "x")], tmp_path, desc="test") == {"burn": "done"}
    row = json.loads((tmp_path / "jobs.jsonl").read_text())
    assert 0.05 < row["cpu_seconds"] <= row["seconds"] + 0.1
