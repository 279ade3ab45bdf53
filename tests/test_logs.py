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
