"""console: progress bars and library chatter leave the notebook for the log; warnings stay."""
import logging

import nbformat

from workbook import console

TQDM = "precision:  40%|████      | 6/15 [00:03<00:04,  2.10it/s]"
AUTOTUNE = ["AUTOTUNE mm(256x1152, 1152x4304)", "strides: [1152, 1], [1, 1152]",
            "dtypes: torch.bfloat16, torch.bfloat16",
            "  triton_mm_4 0.0410 ms 100.0% ACC_TYPE='tl.float32', BLOCK_K=64",
            "SingleProcess AUTOTUNE benchmarking takes 1.2 seconds and 3.4 seconds precompiling "
            "for 20 choices"]
WARNING = "/x/y.py:3: UserWarning: the tolerance is looser than the dtype's resolution"


def test_split_stderr_moves_bars_and_autotuning_and_keeps_warnings():
    text = "\n".join([TQDM, WARNING, *AUTOTUNE,
                      "IProgress not found. Please update jupyter and ipywidgets.",
                      "No valid triton configs. OutOfResources: out of resource: shared memory",
                      "  warnings.warn("]) + "\n"
    kept, moved = console.split_stderr(text)
    assert kept == WARNING + "\n  warnings.warn(\n"
    assert moved[0] == TQDM and len(moved) == 1 + len(AUTOTUNE) + 2


def test_a_bar_redrawn_with_carriage_returns_counts_once_at_its_last_state():
    kept, moved = console.split_stderr("\rstack:   0%|          | 0/4\rstack:  50%|█████     | "
                                       "2/4\n")
    assert kept == "" and moved == ["stack:  50%|█████     | 2/4"]


def test_clean_cell_drops_an_output_left_empty_and_keeps_stdout():
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=TQDM + "\n"),
                    nbformat.v4.new_output("stream", name="stdout",
                                           text="42%|not a bar on stdout\n"),
                    nbformat.v4.new_output("stream", name="stderr",
                                           text=WARNING + "\n" + TQDM + "\n")]
    moved, kept = console.clean_cell(cell)
    assert moved == [TQDM, TQDM] and kept == [WARNING]
    assert [(o.name, o.text) for o in cell.outputs] == [("stdout", "42%|not a bar on stdout\n"),
                                                       ("stderr", WARNING + "\n")]


def test_clean_notebook_writes_the_chatter_to_the_log_under_its_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    a, b = nbformat.v4.new_code_cell("a"), nbformat.v4.new_code_cell("b")
    b.outputs = [nbformat.v4.new_output("stream", name="stderr", text="\n".join(AUTOTUNE) + "\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), a, b]
    log = tmp_path / "log.txt"
    assert console.clean_notebook(nb, log) == len(AUTOTUNE)
    assert b.outputs == [] and log.read_text().splitlines() == ["--- cell 2", *AUTOTUNE]


def test_quiet_libraries_sends_autotuning_records_to_the_log(tmp_path, capsys):
    log = tmp_path / "log.txt"
    console.quiet_libraries(log)
    try:
        logging.getLogger("torch._inductor.select_algorithm").warning(
            "Runtime error during autotuning: \nboom. \nIgnoring this choice.")
        assert "Ignoring this choice." in log.read_text()
        assert "autotuning" not in capsys.readouterr().err
    finally:
        for name in console.CHATTY_LOGGERS:
            lg = logging.getLogger(name)
            lg.handlers.clear()
            lg.propagate = True


def test_progress_is_a_text_bar_on_stderr(capsys):
    for _ in console.progress(range(3), desc="work"):
        pass
    err = capsys.readouterr().err
    assert "work: 100%|" in err and "IProgress" not in err
    assert all(console.is_chatter(line)
               for line in err.replace("\r", "\n").splitlines() if line.strip())


def test_a_relayed_line_is_on_stderr_and_moves_to_the_log(capsys):
    console.relay("[serve] warm-up: batch 8 ready in 3.0 s")
    err = capsys.readouterr().err
    assert err == console.RELAY + "[serve] warm-up: batch 8 ready in 3.0 s\n"
    kept, moved = console.split_stderr(err + "UserWarning: kept\n")
    assert moved == [err.rstrip("\n")] and kept.strip() == "UserWarning: kept"
