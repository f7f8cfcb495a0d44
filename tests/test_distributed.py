"""tf.distribute on CPU: MirroredStrategy over 2 logical CPU devices equals one device; 2-worker run completes.

Logical devices can only be configured before TensorFlow initialises them, and a multi-worker strategy
needs its own process per worker, so every setting runs in a subprocess (tests/dist_worker.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("dist_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT),
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy", "all_proxy", "ALL_PROXY"):
        env.pop(key, None)  # gRPC would route the workers' localhost traffic through a proxy
    env.update(extra)
    return env


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _losses(log_lines: list[str]) -> list[float]:
    header = log_lines[0].split(",")
    column = header.index("loss")
    return [float(line.split(",")[column]) for line in log_lines[1:]]


@pytest.mark.slow
def test_mirrored_equals_single_device(tiny_dataset, tmp_path):
    """Same global batch on 1 device and on 2 mirrored replicas → same weights, per-sample state and losses.

    ``state`` is a CE subclass with per-sample rows (scatter_rows) and a class table (all-gathered
    batch): it covers the base-class machinery even before LDLVA exists, and CE's own step with it (plain CE
    is not run separately: every path it takes, ``state`` takes too). LDLVA runs in both neighbour modes and
    the release variant when its module imports. The backbone has no BatchNorm (see dist_worker.py).
    """
    methods = "state,ldlva-bank,ldlva-forward,ldlva-release"
    # 56 samples, global batch 12: four batches of 12 (6 per replica) then one of 8 (4 per replica).
    proc = subprocess.run([sys.executable, str(WORKER), "equality", "--data", str(tiny_dataset), "--out", str(tmp_path),
                           "--methods", methods, "--batch", "12", "--epochs", "2"],
                          env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "equality.json").read_text())
    assert "skipped" not in results["state"]
    for label, result in results.items():
        if "skipped" in result:
            continue
        assert result["replicas"] == 2, label
        assert result["replica_spread"] < 1e-6, f"{label}: replica copies of a variable diverged"
        diffs = result["relative_diffs"]
        worst = sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
        assert worst[0][1] < 1e-4, f"{label}: mirrored differs from one device: {worst}"
        single, mirrored = _losses(result["single_log"]), _losses(result["mirrored_log"])
        assert len(single) == len(mirrored) == 2
        for a, b in zip(single, mirrored):
            assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (label, single, mirrored)
    # The per-sample state really moved (a test that compares zeros with zeros proves nothing).
    assert any("last_probs" in name for name in results["state"]["relative_diffs"])


@pytest.mark.slow
def test_multiworker_two_processes(tiny_dataset, tmp_path):
    """Two MultiWorkerMirroredStrategy workers on localhost train, evaluate and checkpoint to the end."""
    method = "ldlva-bank"
    try:
        from models.registry import get_method

        get_method("ldlva")
    except Exception:
        method = "state"  # LDLVA not written yet: the per-sample-state test model exercises the same paths
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs, logs = [], []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"worker-{index}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), "multiworker", "--data", str(tiny_dataset), "--out", str(tmp_path),
             "--method", method, "--batch", "8", "--epochs", "2"],
            env=_env(TF_CONFIG=tf_config), stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 240
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    outputs = [(tmp_path / f"worker-{i}.log").read_text()[-3000:] for i in range(2)]
    for index, proc in enumerate(procs):
        assert proc.returncode == 0, f"worker {index} (rc {proc.returncode}):\n{outputs[index]}"
    results = [json.loads((tmp_path / f"result-{i}.json").read_text()) for i in range(2)]
    for result in results:
        assert result["replicas"] == 2
        assert all(abs(x) < 1e6 for x in _losses(result["log"]))
    # Both workers hold the same synchronised model and per-sample state.
    assert results[0]["weights_checksum"] == pytest.approx(results[1]["weights_checksum"], rel=1e-6)
    for name, value in results[0]["state_sums"].items():
        assert value == pytest.approx(results[1]["state_sums"][name], rel=1e-5, abs=1e-5), name
