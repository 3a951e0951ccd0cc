"""workbook.follow: only a log's progress lines are relayed, each once, complete, from where the log
stood when following began."""
from workbook.follow import LINE_CHARS, Follow


def test_only_tagged_lines_are_relayed_each_once_and_a_partial_line_waits(tmp_path):
    log = tmp_path / "child.log"
    got = []
    f = Follow(log, got.append)
    assert f.poll() == 0 and got == []  # nothing written yet
    with open(log, "ab") as w:
        w.write(b"[direct] loaded in 1.4 s; warming up\nW1208 a torch warning\n[rank0]: Traceback\n"
                b"[2/5] rate 8: 24/24 ok in 9.3 s\n[serve] warm-up: batch 4 re")
        w.flush()
        assert f.poll() == 2
        assert got == ["[direct] loaded in 1.4 s; warming up", "[2/5] rate 8: 24/24 ok in 9.3 s"]
        w.write(b"ady in 52.1 s\n")
    assert f.poll() == 1 and got[-1] == "[serve] warm-up: batch 4 ready in 52.1 s"
    assert f.poll() == 0 and len(got) == 3


def test_a_log_written_before_is_skipped_unless_asked_for(tmp_path):
    """A resumed run appends to the log of the first: its old lines are not news."""
    log = tmp_path / "child.log"
    log.write_text("[direct] from the first run\n")
    got = []
    Follow(log, got.append).poll()
    assert got == []
    Follow(log, got.append, from_start=True).poll()
    assert got == ["[direct] from the first run"]


def test_a_bar_redrawn_before_a_line_and_a_huge_line(tmp_path):
    log = tmp_path / "child.log"
    got = []
    f = Follow(log, got.append)
    log.write_bytes(b"Loading:  10%|#\r[direct] loaded\n[serve] " + b"x" * (3 * LINE_CHARS) + b"\n")
    f.poll()
    assert got[0] == "[direct] loaded" and len(got[1]) == LINE_CHARS


def test_a_tensor_parallel_ranks_timestamped_line_is_progress_and_its_traceback_is_not(tmp_path):
    log = tmp_path / "torchrun.log"
    got = []
    f = Follow(log, got.append)
    log.write_text("[rank 1 +   40.2 s] loaded and sharded over 2 ranks in 38.0 s\n"
                   "[rank1]: Traceback (most recent call last):\n")
    f.poll()
    assert got == ["[rank 1 +   40.2 s] loaded and sharded over 2 ranks in 38.0 s"]
