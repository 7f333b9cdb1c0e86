"""benchmarks/gpu_check.sh, the script that times every step on a GPU against the CPU, runs its steps on the CPU
(a tiny glyph set): the commands and code paths a GPU run uses stay working where CI has no GPU."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_step_and_prints_its_table(tmp_path):
    lowshot = Path(sys.executable).parent / "lowshot"
    env = {**os.environ, "DEVICES": "cpu", "QUICK": "1", "OUT_DIR": str(tmp_path), "LOWSHOT": str(lowshot)}
    out = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("\t") for line in out.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["train-fp32", "features", "generate", "grid-logreg,protonet,imprint",
                                    "episodes-every-head"]
    assert all(r[1] == "cpu" and float(r[2]) > 0 and r[3] == "1.00" for r in rows)
