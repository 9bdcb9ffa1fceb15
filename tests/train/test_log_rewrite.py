"""--resume rewrites log.jsonl/log.csv without the records past the checkpoint; a crash during that
rewrite must leave the old logs whole (issue 11: a kill left log.jsonl at 0 bytes)."""
import builtins
import io
import json

import pytest

from gpt3lab.train.loop import LOG_FIELDS, read_log, truncate_log


class Crash(BaseException):
    pass


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"step": s, "loss": 1.0 / s, "lr": 1e-3} for s in range(1, 11)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run / "log.csv").write_text(",".join(LOG_FIELDS) + "\n" + "1\n" * 10)
    return run, recs


def _crashing_writes(monkeypatch):
    """Every text file opened for writing writes its first 5 characters, then the process 'dies'."""
    real_open = builtins.open

    def open_(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        if "w" in mode and "b" not in mode:
            def write(text, _w=f.write):
                _w(text[:5])
                f.flush()
                raise Crash
            f.write = write
        return f
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)


def test_truncate_keeps_records_up_to_the_step(tmp_path):
    run, recs = _run_dir(tmp_path)
    truncate_log(run, 4)
    assert read_log(run) == recs[:4]
    assert len((run / "log.csv").read_text().splitlines()) == 5


def test_crash_during_rewrite_leaves_the_old_logs(tmp_path, monkeypatch):
    run, recs = _run_dir(tmp_path)
    csv = (run / "log.csv").read_text()
    _crashing_writes(monkeypatch)
    with pytest.raises(Crash):
        truncate_log(run, 4)
    monkeypatch.undo()
    assert read_log(run) == recs and (run / "log.csv").read_text() == csv
    assert sorted(p.name for p in run.iterdir()) == ["log.csv", "log.jsonl"]     # no temp file left
