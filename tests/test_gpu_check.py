"""benchmarks/gpu_check.py, the one script a lent GPU runs: it reports what finished when its time runs out."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


def test_the_report_lists_each_finished_chapter_with_its_failures(tmp_path):
    smoke = tmp_path / "smoke.jsonl"
    smoke.write_text("\n".join(json.dumps(r) for r in (
        {"chapter": "01_foundations", "minutes": 1.25, "failures": [], "retrained": []},
        {"chapter": "05_dit", "minutes": 2.0, "failures": ["cell 96eada98: RuntimeError: devices"], "retrained": ["vqgan"]})))
    assert gpu_check.chapters_table(smoke) == [
        "| 01_foundations | 1.2 | ok |", "| 05_dit | 2.0 | cell 96eada98: RuntimeError: devices; retrained vqgan |"]
    assert gpu_check.chapters_table(tmp_path / "none.jsonl") == []


def test_a_run_out_of_time_still_writes_its_report(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path), "--minutes",
                           "0.01"], capture_output=True, text=True, timeout=120)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert done.returncode == 1 and "time ran out" in report and "did not finish" in report, report
