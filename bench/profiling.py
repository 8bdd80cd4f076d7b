"""Optional py-spy profiles of the Python processes during each run, and their hottest functions.

py-spy (`pip install py-spy`) samples without changing the services; its raw format is one line
per distinct stack, `frame;frame;... count`, which is all the summary here needs. Idle threads
(waiting in the event loop's poll) are left out by py-spy, so samples approximate CPU time.
"""

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PYTHON_PROCESSES = ("api", "responder", "mock", "secantus", "bench")
RATE = 100
_SAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("--profile needs py-spy: pip install py-spy")
    return found


@contextlib.contextmanager
def profiling(directory: Path, label: str, pids: dict[str, int]) -> Iterator[dict[str, Path]]:
    """Record every Python process of `pids` while the block runs; yields the output paths."""
    executable = py_spy()
    directory.mkdir(parents=True, exist_ok=True)
    stem = _SAFE.sub("_", label)
    recorders: list[subprocess.Popen[bytes]] = []
    outputs: dict[str, Path] = {}
    for name, pid in pids.items():
        if name not in PYTHON_PROCESSES:
            continue
        output = directory / f"{stem}-{name}.txt"
        outputs[name] = output
        command = [executable, "record", "--nonblocking", "--function", "--format", "raw"]
        command += ["--rate", str(RATE), "--output", str(output), "--pid", str(pid)]
        recorders.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    try:
        yield outputs
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for recorder in recorders:
            try:
                recorder.wait(30)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()


@dataclass(frozen=True, slots=True)
class Hotspots:
    samples: int
    own: list[tuple[str, int]]
    """Functions by samples spent in them (self time)."""
    total: list[tuple[str, int]]
    """Functions by samples spent in them or below (inclusive time)."""


def hotspots(raw: str, top: int = 12) -> Hotspots:
    """The hottest functions of a py-spy raw profile."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    return Hotspots(samples, own.most_common(top), total.most_common(top))


def hotspot_lines(outputs: dict[str, Path], top: int = 12) -> list[str]:
    lines = []
    for name, path in outputs.items():
        try:
            spots = hotspots(path.read_text(errors="replace"), top)
        except OSError:
            lines.append(f"{name}: no profile ({path} missing)")
            continue
        lines.append(f"{name}: {spots.samples} samples at {RATE}/s ({path})")
        lines.append("  self:")
        lines += [f"    {100 * n / max(spots.samples, 1):5.1f}%  {frame}" for frame, n in spots.own]
        lines.append("  inclusive:")
        lines += [
            f"    {100 * n / max(spots.samples, 1):5.1f}%  {frame}" for frame, n in spots.total
        ]
    return lines
