"""The check a machine with a GPU runs once, in one go: every chapter in the gpu profile with a step cap, on the real
device (tests/test_gpu_profile.py), then `t4_budget.py --calibrate` (the training rate of each recipe's gpu config),
each chapter's minutes and failing cells and the calibration table written to a report as they come.

    python benchmarks/gpu_check.py [--out gpu-check] [--minutes 9]

Writes `OUT/report.md` (what a closing note quotes) and `OUT/smoke.jsonl` (one line per chapter). Chapters still
running when the time is up are reported as not finished; the calibration gets the last minute and a half.
Not part of CI: CI has no GPU.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION_SECONDS = 90  # five steps of each of six recipes, and counting their FLOPs


def machine() -> str:
    "The device and the library versions the report is about."
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device (the stand-in runs instead)"
    return f"{device}; torch {torch.__version__}, Python {sys.version.split()[0]}"


def run(command: list[str], seconds: float, log: Path, **env: str) -> tuple[int | None, float]:
    "Run `command` from the repository root for at most `seconds`, its output in `log`; its exit status (None if cut) and wall time."
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
        try:
            code = process.wait(timeout=max(seconds, 1))
        except subprocess.TimeoutExpired:  # stop it and what it started (the chapters' kernels), to free the GPU
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    return code, time.perf_counter() - start


def chapters_table(smoke: Path) -> list[str]:
    "One report line per chapter that finished, with its minutes and what failed."
    lines = []
    for record in map(json.loads, smoke.read_text(encoding="utf-8").splitlines() if smoke.exists() else []):
        trouble = record["failures"] + [f"retrained {name}" for name in record["retrained"]]
        lines.append(f"| {record['chapter']} | {record['minutes']:.1f} | {'; '.join(trouble) or 'ok'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check", help="folder for the report and the logs")
    parser.add_argument("--minutes", type=float, default=9.0, help="wall time for both parts together")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    smoke, deadline = out / "smoke.jsonl", time.perf_counter() + 60 * args.minutes
    smoke.unlink(missing_ok=True)
    smoke_code, smoke_seconds = run([sys.executable, "-m", "pytest", "-q", "-m", "gpu_smoke", "tests/test_gpu_profile.py"],
                                    deadline - time.perf_counter() - CALIBRATION_SECONDS, out / "smoke.log",
                                    STORYTELLER_SMOKE_LOG=str(smoke))
    calibration_code, calibration_seconds = run(
        [sys.executable, "benchmarks/t4_budget.py", "--calibrate"], deadline - time.perf_counter(), out / "calibrate.log")
    calibration = [line for line in (out / "calibrate.log").read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    done = chapters_table(smoke)
    verdict = {0: "every chapter ran", 1: "some chapters failed", None: "time ran out"}.get(smoke_code, f"pytest exit {smoke_code}")
    report = [f"# GPU check on {machine()}", "",
              f"Chapters in the gpu profile, step cap 2: {verdict}; {len(done)} finished in {smoke_seconds / 60:.1f} min.", "",
              "| chapter | minutes | failures |", "|---|---|---|", *done, "",
              f"Calibration (`t4_budget.py --calibrate`, {calibration_seconds / 60:.1f} min"
              f"{'' if calibration_code == 0 else ', did not finish: see calibrate.log'}):", "", *calibration, ""]
    (out / "report.md").write_text("\n".join(report), encoding="utf-8")
    print("\n".join(report))
    return 0 if smoke_code == 0 and calibration_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
