"""`seqtool translate` on awkward input: one output line per input line, in order, exit code 0, no traceback."""

from __future__ import annotations

import fcntl
import select
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.helpers import write_config


def seqtool(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI in a fresh process, with bytes in and out."""
    return subprocess.run(
        [sys.executable, "-m", "seqtool", *args], input=stdin, capture_output=True, timeout=300, check=False
    )


def translate(run_dir: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """`seqtool translate RUN_DIR ARGS` on one thread (tiny models are faster so on a busy machine)."""
    return seqtool("translate", str(run_dir), "--threads", "1", *args, stdin=stdin)


def output_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    """The stdout lines of a successful run (stdout must be UTF-8, every line ended by a newline)."""
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"Traceback" not in result.stderr
    text = result.stdout.decode("utf-8")
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


@pytest.fixture(scope="module")
def run_dir(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Transformer trained for 10 steps through the real `seqtool train` (greedy decoding by default)."""
    root = tmp_path_factory.mktemp("translate-input")
    write_config(
        root / "tiny.yaml", tiny_corpus, "transformer", vocab_size=200, decode={"beam": 1}, max_steps=10, eval_every=10
    )
    result = seqtool("train", str(root / "tiny.yaml"), "--run-dir", str(root / "run"))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return root / "run"


def searched_and_forced(run_dir: Path, sources: list[str], beam: int, quantize: str) -> list[tuple[str, float]]:
    """For each source: the library's translation by the run's best.pt (with `quantize` applied), and the
    log-probability of its tokens and </s> by teacher forcing."""
    import torch

    from seqtool.data.batching import pad_sequences
    from seqtool.decode.quantize import quantize_model
    from seqtool.decode.search import SearchConfig, score_sequence, search
    from seqtool.rundir import load_for_inference

    cpu = torch.device("cpu")
    model, tokenizer, cfg, _ = load_for_inference(run_dir, "best", cpu)
    if quantize != "none":
        model = quantize_model(model, quantize, cpu)
    sp = tokenizer.specials
    src = pad_sequences(tokenizer.src.encode(sources), sp.pad, suffix=sp.eos)
    d = cfg.decode
    search_cfg = SearchConfig(beam=beam, nbest=1, length_penalty=d.length_penalty, max_len_a=d.max_len_a,
                              max_len_b=d.max_len_b, stop=d.stop)  # fmt: skip
    hyps = search(model, src, search_cfg)
    tokens = [h[0].tokens for h in hyps]
    forced = score_sequence(model, src, pad_sequences(tokens, sp.pad))
    return list(zip(tokenizer.tgt.decode(tokens), forced.tolist(), strict=True))


LONG_LINE = " ".join(["file"] * 10_000)
ODD_LINES = [
    "Open the file",
    "",
    LONG_LINE,
    "   ",
    "\t \t",
    "\x00",
    "Save\tthe\tfile",
    "NUL\x00inside",
    "carriage\rreturn inside a line",
    "escape \x1b[31mred\x1b[0m, bell \x07, delete \x7f",
    "vertical tab \x0b form feed \x0c separators \x1c\x1d\x1e\x1f",
    "C1 controls \x85 and \x9f",
    "emoji 😀🎉 👩‍💻 flags 🇩🇪",
    "שלום עולם",
    "مرحبا بالعالم",
    "\u202eright-to-left override\u202c",
    "e\u0301 a\u0308 combining marks",
    "\u0301\u0301\u0301",
    "\u200b\u200d\ufeff",
    "\u2028line and paragraph separators\u2029",
    "\ufffd replacement character",
    "\U0010ffff\ufffe noncharacters",
]


def test_odd_lines_keep_one_output_line_each(run_dir: Path) -> None:
    stdin = "".join(line + "\n" for line in ODD_LINES).encode("utf-8")
    result = translate(run_dir, stdin=stdin)
    out = output_lines(result)
    assert len(out) == len(ODD_LINES)
    for i, line in enumerate(ODD_LINES):
        if line.strip(" \t\x00") == "":
            assert out[i] == "", (i, line)
    assert result.stderr.decode() == "warning: 1 input line longer than 250 pieces was truncated (line 3)\n"


def test_max_input_len_option_and_the_warning_list(run_dir: Path) -> None:
    lines = ["Open the file now please"] * 7
    stdin = "".join(line + "\n" for line in lines).encode()
    result = translate(run_dir, "--max-input-len", "2", stdin=stdin)
    assert len(output_lines(result)) == 7
    assert result.stderr.decode() == (
        "warning: 7 input lines longer than 2 pieces were truncated (lines 1, 2, 3, 4, 5, ...)\n"
    )


@pytest.mark.parametrize(
    ("stdin", "lines", "warning"),
    [
        pytest.param(b"", 0, "", id="empty input"),
        pytest.param(b"\n", 1, "", id="one empty line"),
        pytest.param(b"Open the file\nClose", 2, "", id="no trailing newline"),
        pytest.param(b"Open the file\r\n\r\nClose\r\n", 3, "", id="CRLF"),
        pytest.param(b"\xef\xbb\xbfOpen the file\n", 1, "", id="BOM"),
        pytest.param("Open \ufffd file\n".encode(), 1, "", id="real U+FFFD"),
        pytest.param(
            b"Open the file\nOpen \xff\xfe file\nClose \xc3\n\xe2\x82\n",
            4,
            "warning: invalid UTF-8 in stdin (first at line 2) was replaced by U+FFFD\n",
            id="invalid UTF-8",
        ),
    ],
)
def test_line_endings_and_encodings(run_dir: Path, stdin: bytes, lines: int, warning: str) -> None:
    result = translate(run_dir, stdin=stdin)
    out = output_lines(result)
    assert len(out) == lines
    if stdin.startswith(b"Open the file\r\n"):
        assert out[1] == ""
    assert result.stderr.decode() == warning


def test_head_closing_the_pipe_is_quiet(run_dir: Path) -> None:
    """`seqtool translate ... | head -1`: the reader goes away while the output is larger than the pipe holds."""
    stdin = b"Open the file\n" + b"\n" * 300_000  # empty lines: a large output that costs no search
    with subprocess.Popen(
        [sys.executable, "-m", "seqtool", "translate", str(run_dir), "--threads", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        if hasattr(fcntl, "F_GETPIPE_SZ"):
            assert fcntl.fcntl(proc.stdout.fileno(), fcntl.F_GETPIPE_SZ) < 300_000
        proc.stdin.write(stdin)
        proc.stdin.close()
        first = proc.stdout.readline()
        proc.stdout.close()
        stderr = proc.stderr.read().decode(errors="replace")
        code = proc.wait(timeout=300)
    assert first.endswith(b"\n")
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert stderr == "" and code == 0, stderr


def test_invalid_utf8_in_an_input_file_is_replaced_with_a_warning(run_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.en"
    bad.write_bytes(b"Open the file\nOpen \xff file\n")
    out = tmp_path / "out.de"
    result = translate(run_dir, "-i", str(bad), "-o", str(out))
    assert result.returncode == 0 and b"Traceback" not in result.stderr
    assert result.stderr.decode() == f"warning: invalid UTF-8 in {bad} (first at line 2) was replaced by U+FFFD\n"
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2


def test_output_file_is_not_created_when_translation_fails(run_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.en"
    src.write_bytes(b"Open the file\n")
    result = translate(run_dir, "-i", str(src), "-o", str(tmp_path / "out.de"), "--checkpoint", "step_999")
    assert result.returncode == 2 and b"Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.en"]  # no output, no temporary file


def test_unwritable_output_is_a_user_error(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    result = translate(run_dir, "-o", str(tmp_path / "adir"), "--overwrite", stdin=b"Open\n")
    assert result.returncode == 2 and b"Traceback" not in result.stderr
    assert result.stderr.decode().startswith(f"error: cannot write {tmp_path / 'adir'}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]


# make test-slow: keeps make test under 8 minutes (10 s of subprocess decoding)
@pytest.mark.slow
def test_nbest_and_scores(run_dir: Path) -> None:
    lines = ["Open the file", "", "Save all documents"]
    stdin = "\n".join(lines).encode() + b"\n"
    best = output_lines(translate(run_dir, "--beam", "4", stdin=stdin))
    nbest = output_lines(translate(run_dir, "--beam", "4", "--nbest", "3", stdin=stdin))
    rows = [line.split("\t") for line in nbest]
    assert all(len(r) == 3 for r in rows)
    numbers = [int(r[0]) for r in rows]
    assert numbers == sorted(numbers) and set(numbers) == {1, 2, 3}
    assert numbers.count(1) == 3 and numbers.count(3) == 3  # the empty line has a single (empty) translation
    for number in (1, 3):
        group = [r for r in rows if int(r[0]) == number]
        assert group[0][1] == best[number - 1]  # the first of the n-best list is the 1-best output
        group_scores = [float(r[2]) for r in group]
        assert group_scores == sorted(group_scores, reverse=True)
    scored = output_lines(translate(run_dir, "--beam", "4", "--scores", stdin=stdin))
    assert [s.split("\t")[0] for s in scored] == best
    # each score is the log-probability the model (int8 as it translated: the default for a Transformer on the CPU)
    # gives the tokens of its translation and </s>, by teacher forcing; an empty line is not translated: score 0
    from seqtool.decode.quantize import int8_pays  # the default: int8 on an AVX-512 CPU, else fp32

    expected = searched_and_forced(run_dir, [lines[0], lines[2]], beam=4, quantize="int8" if int8_pays() else "none")
    assert [s.split("\t")[0] for s in scored[::2]] == [text for text, _ in expected]
    assert float(scored[1].split("\t")[1]) == 0.0
    scores = [float(s.split("\t")[1]) for s in scored[::2]]
    assert scores == pytest.approx([log_prob for _, log_prob in expected], abs=1e-3)
    widened = translate(run_dir, "--beam", "1", "--nbest", "2", stdin=b"Open the file\n")
    assert len(output_lines(widened)) == 2 and b"using --beam 2" in widened.stderr


@pytest.mark.slow  # about 6 s (make test-slow)
def test_stream_answers_each_line_before_the_next_arrives(run_dir: Path) -> None:
    batch = output_lines(translate(run_dir, stdin=b"Open the file\nSave all documents\n"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqtool", "translate", str(run_dir), "--threads", "1", "--stream"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        answers = []
        for line in (b"Open the file\n", b"Save all documents\n"):
            proc.stdin.write(line)
            proc.stdin.flush()  # stdin stays open: only a line-by-line answer can arrive now
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            assert ready, "no answer within 120 s while the input stayed open"
            answers.append(proc.stdout.readline().decode("utf-8").rstrip("\n"))
        proc.stdin.close()
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    assert answers == batch
    bad = translate(run_dir, "--stream", "-i", "x.txt")
    assert bad.returncode == 2 and b"--stream reads stdin" in bad.stderr
