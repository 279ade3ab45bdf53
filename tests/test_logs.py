"""ganzoo.logs: the run directory's writer (every metrics row to metrics.jsonl, TensorBoard and
the log line), resume's truncation of metrics.jsonl, and the writer of ranks > 0 that writes
nothing."""
import json

from ganzoo.logs import NoWriter, RunWriter, new_run_dir, truncate_metrics


def test_truncate_metrics_keeps_the_rows_up_to_the_checkpoint(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 2, "a": 1}\n{"step": 4, "a": 2}\n{"step": 4, "classes": 9}\n'
                 '{"step": 6, "a": 3}\nnot json\n')
    truncate_metrics(p, 4)
    assert [json.loads(l) for l in p.read_text().splitlines()] == [
        {"step": 2, "a": 1}, {"step": 4, "a": 2}, {"step": 4, "classes": 9}]


def test_run_writer_writes_one_row_everywhere(tmp_path, capsys):
    run = tmp_path / "run"
    w = RunWriter(run, {"model": "x", "steps": 4}, start=0, resumed=False, quiet=True)
    w.row({"step": 2, "loss": 0.5})
    w.row({"step": 2, "classes": 10}, tag="eval/")
    w.grid(2, lambda: __import__("numpy").zeros((4, 4, 1), "uint8"))
    w.close()
    assert json.loads((run / "config.json").read_text()) == {"model": "x", "steps": 4}
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 2, "loss": 0.5}, {"step": 2, "classes": 10}]
    assert capsys.readouterr().out.splitlines() == [json.dumps(r) for r in rows]  # --no-progress lines
    assert (run / "samples" / "step_000002.png").is_file()
    assert list(run.glob("events.out.tfevents.*"))  # tensorboard is installed in CI
    # a resumed run keeps the rows up to its checkpoint's step; a new run starts the file anew
    RunWriter(run, {}, start=2, resumed=True, quiet=False).close()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    RunWriter(run, {}, start=0, resumed=False, quiet=False).close()
    assert (run / "metrics.jsonl").read_text() == ""


def test_no_writer_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    w = NoWriter()
    w.start_bar(10, 0, "x")
    w.bar.update(1)
    w.row({"step": 1, "a": 1.0})
    w.grid(1, lambda: 1 / 0)  # never even draws
    w.checkpoint(None, 1, None, None)
    w.say("hello")
    w.finish("done")
    w.close()
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr() == ("", "")


def test_new_run_dirs_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = new_run_dir("dcgan")
    a.mkdir(parents=True)
    b = new_run_dir("dcgan")
    assert a.parent == b.parent == tmp_path.joinpath("runs", "dcgan").relative_to(tmp_path) and a != b


# ---- the job log: progress lines and the estimate ----------------------------------------------
class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _steps(bar, clock, n, seconds_each):
    for _ in range(n):
        clock.t += seconds_each
        bar.update(1)


def test_job_log_lines_come_at_the_interval_and_at_each_row(monkeypatch, capsys):
    from ganzoo import logs
    monkeypatch.delenv("GANZOO_LOG_INTERVAL", raising=False)
    clock = Clock()
    bar = logs.Progress(25000, 0, "dcgan", "lines", {"device": "cpu"}, clock=clock)
    _steps(bar, clock, 2, 10.0)  # warm-up: slow, and not timed
    assert capsys.readouterr().err == ""
    _steps(bar, clock, 10, 0.5)  # 10 timed steps over 5 s: the estimate, at 2 steps/s
    assert capsys.readouterr().err == "dcgan: estimate: steps 0->25000 take about 3h28m at 2 steps/s on this device\n"
    _steps(bar, clock, 10, 0.5)  # t = 30 s since the start: the first line of the interval
    assert capsys.readouterr().err == "dcgan: step 22/25000 (0.1%), 2 steps/s, 3h28m left\n"
    _steps(bar, clock, 28, 0.5)  # step 50, t = 44 s: no line yet; the row makes one, with its losses
    assert capsys.readouterr().err == ""
    bar.at_row({"step": 50, "loss_d": 0.4123, "loss_g": 2.31, "lr_g": 2e-4, "lr_d": 2e-4,
                "images_per_s": 128.0, "steps_per_s": 2.0})
    assert capsys.readouterr().err == "dcgan: step 50/25000 (0.2%), 2 steps/s, 3h27m left, loss_d 0.412 loss_g 2.31\n"
    _steps(bar, clock, 59, 0.5)  # 29.5 s after the row's line: none
    assert capsys.readouterr().err == ""
    _steps(bar, clock, 1, 0.5)  # 30 s: the next, with the last row's losses
    assert capsys.readouterr().err == "dcgan: step 110/25000 (0.4%), 2 steps/s, 3h27m left, loss_d 0.412 loss_g 2.31\n"
    monkeypatch.setattr(logs, "INTERVAL", 3.0)  # the interval is read when the bar is made
    bar = logs.Progress(100, 0, "dcgan", "lines", {}, clock=clock)
    _steps(bar, clock, 4, 1.0)
    assert capsys.readouterr().err == "dcgan: step 3/100 (3.0%), 1 steps/s, 1m37s left\n"


def test_a_run_of_days_is_shown_the_steps_that_end_in_hours(capsys):
    from ganzoo import logs
    clock = Clock()
    # --no-progress (quiet): no progress lines, but the estimate; a slow run gets it after 30 s
    bar = logs.Progress(500000, 0, "began", "quiet", {"device": "cpu"}, clock=clock)
    _steps(bar, clock, 2 + 4, 6.0)
    assert capsys.readouterr().err == ""
    _steps(bar, clock, 1, 6.0)  # 5 timed steps, 30 s: 6 s a step
    assert capsys.readouterr().err == (
        "began: estimate: steps 0->500000 take about 34d17h at 0.167 steps/s on this device; --steps 4800 would "
        "end in about 8 hours at this speed, or train on a GPU\n")
    _steps(bar, clock, 100, 6.0)
    bar.at_row({"step": 107, "loss_d": 1.0})
    assert capsys.readouterr().err == ""  # said once; the rows go to stdout (--no-progress)
    # a resumed run: the steps it has left, and the --steps counted from where it is
    bar = logs.Progress(500000, 200000, "began", "quiet", {"device": "cpu"}, clock=clock)
    _steps(bar, clock, 2 + 10, 6.0)
    assert capsys.readouterr().err == (
        "began: estimate: steps 200000->500000 take about 20d20h at 0.167 steps/s on this device; --steps 204800 "
        "would end in about 8 hours at this speed, or train on a GPU\n")


def test_no_estimate_from_the_warm_up_steps_nor_at_the_last_step(capsys):
    from ganzoo import logs
    clock = Clock()
    bar = logs.Progress(3, 0, "dcgan", "lines", {}, clock=clock)
    _steps(bar, clock, 3, 40.0)  # the lines have no speed before a timed step, and no estimate comes at the end
    assert capsys.readouterr().err == "dcgan: step 1/3 (33.3%)\ndcgan: step 2/3 (66.7%)\n"  # the last: its row's
    bar.at_row({"step": 3, "loss_d": 0.5})
    assert capsys.readouterr().err == "dcgan: step 3/3 (100.0%), 0.025 steps/s, 0s left, loss_d 0.5\n"


def test_a_line_due_at_or_just_before_a_row_waits_for_the_row(capsys):
    """One line a step: when the interval ends at a row's step, or a quarter-interval before it,
    only the row's line (with its new losses) is printed, not the interval's with the old ones."""
    from ganzoo import logs
    clock = Clock()
    bar = logs.Progress(1000, 0, "dcgan", "lines", {"log_every": 50}, clock=clock)
    _steps(bar, clock, 49, 30 / 49)  # 30 s at step 49: the row at 50 is 0.6 s away
    assert capsys.readouterr().err.count("step 49/") == 0
    _steps(bar, clock, 1, 30 / 49)
    bar.at_row({"step": 50, "loss_d": 0.25})
    assert capsys.readouterr().err.endswith("dcgan: step 50/1000 (5.0%), 1.63 steps/s, 9m42s left, loss_d 0.25\n")
    _steps(bar, clock, 20, 2.0)  # 40 s: the row at 100 is 60 s away, so the line comes now
    err = capsys.readouterr().err
    assert err.startswith("dcgan: step 6") and err.count("\n") == 1


def test_start_bar_picks_bar_lines_or_quiet(tmp_path, monkeypatch, capsys):
    from ganzoo import logs
    w = RunWriter(tmp_path / "r", {"model": "x"}, start=0, resumed=False, quiet=False)
    assert w.start_bar(10, 0, "x").lines and w.bar.inner is None  # stderr is captured: not a terminal
    monkeypatch.setattr(logs, "stderr_is_terminal", lambda: True)
    bar = w.start_bar(10, 0, "x")
    assert not bar.lines and bar.inner is not None  # tqdm's bar in a terminal
    bar.close()
    w.quiet = True
    bar = w.start_bar(10, 0, "x")
    assert not bar.lines and bar.inner is None
    w.close()
    monkeypatch.setenv("GANZOO_LOG_INTERVAL", "0.25")
    assert w.start_bar(10, 0, "x").interval == 0.25
    monkeypatch.setenv("GANZOO_LOG_INTERVAL", "soon")
    import pytest
    from ganzoo.errors import UserError
    with pytest.raises(UserError, match="GANZOO_LOG_INTERVAL=soon: seconds between progress lines"):
        w.start_bar(10, 0, "x")


def test_durations_sizes_and_round_steps():
    from ganzoo.logs import duration, round_down, size
    assert [duration(s) for s in (0.4, 59.4, 60, 250, 3599, 3600, 7690, 86400, 3e6)] == \
        ["0s", "59s", "1m00s", "4m10s", "59m59s", "1h00m", "2h08m", "1d00h", "34d17h"]
    assert [round_down(x) for x in (0.3, 7.9, 99, 4873.2, 12345)] == [1, 7, 99, 4800, 12000]
    assert [size(n) for n in (812, 4000, 55 * 2 ** 20, 1.25 * 2 ** 30)] == ["812 bytes", "3.9 KiB", "55.0 MiB",
                                                                          "1.2 GiB"]


def test_a_job_log_says_where_the_run_is(tmp_path):
    """A real run with stderr going to a file: lines at the (shortened) interval between the
    rows, a line at each row with its losses, and the estimate before the first row."""
    import subprocess
    import sys
    from conftest import ROOT
    log = tmp_path / "log"
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, str(ROOT / "dcgan.py"), "--steps", "400", "--batch-size", "8",
                            "--width", "4", "--image-size", "16", "--log-every", "200", "--sample-every", "400",
                            "--checkpoint-every", "400", "--amp", "off", "--out", str(tmp_path / "r")],
                           stdout=subprocess.DEVNULL, stderr=f, timeout=300,
                           env={**__import__("os").environ, "GANZOO_LOG_INTERVAL": "0.2"})
    err = log.read_text()
    assert r.returncode == 0, err
    lines = err.splitlines()
    progress = [l for l in lines if l.startswith("dcgan: step ")]
    rows = [l for l in progress if l.startswith(("dcgan: step 200/400 ", "dcgan: step 400/400 "))]
    assert len(rows) == 2 and all(" loss_d " in l and " loss_g " in l and " left" in l for l in rows), err
    assert len(progress) > len(rows), err  # lines at the interval between the rows
    estimate = [i for i, l in enumerate(lines) if l.startswith("dcgan: estimate: steps 0->400 take about ")]
    assert len(estimate) == 1 and estimate[0] < lines.index(rows[0]), err
    assert "\r" not in err and "it/s" not in err  # plain lines, no bar


def test_a_resumed_run_purges_the_tensorboard_steps_written_after_its_checkpoint(tmp_path):
    """A run killed after its checkpoint at step 2 had logged step 4; the resumed run logs step 4
    anew: TensorBoard shows each step once, the resumed run's value (purge_step, as
    metrics.jsonl is truncated)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    w = RunWriter(run, {"model": "x"}, start=0, resumed=False, quiet=False)
    w.row({"step": 2, "loss": 0.5})
    w.row({"step": 4, "loss": 0.25})  # after the checkpoint at 2: lost with the crash
    w.close()
    w = RunWriter(run, {"model": "x"}, start=2, resumed=True, quiet=False)
    w.row({"step": 4, "loss": 0.75})
    w.close()
    acc = EventAccumulator(str(run))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(2, 0.5), (4, 0.75)]


def test_an_evaluation_is_not_counted_in_the_speed_nor_the_time_left(capsys):
    """Seen: after a 4-minute --eval-every evaluation a job log said 0.351 steps/s and 4m42s left
    for a run training at 6 steps/s; time in bar.paused() is left out."""
    from ganzoo import logs
    clock = Clock()
    bar = logs.Progress(1000, 0, "dcgan", "lines", {"log_every": 100}, clock=clock)
    _steps(bar, clock, 100, 0.5)
    bar.at_row({"step": 100, "loss_d": 0.5})
    capsys.readouterr()
    with bar.paused():
        clock.t += 240.0
    _steps(bar, clock, 100, 0.5)
    bar.at_row({"step": 200, "loss_d": 0.5})
    assert capsys.readouterr().err.endswith("dcgan: step 200/1000 (20.0%), 2 steps/s, 6m40s left, loss_d 0.5\n")
    assert isinstance(logs.NoBar().paused(), type(logs.nullcontext()))
