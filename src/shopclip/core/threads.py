"""Thread behaviour that suits a shared machine: worker threads sleep when idle, never spin.

torch's OpenMP pool (GNU libgomp) reads ``OMP_WAIT_POLICY`` once, when the library is
loaded, i.e. at ``import torch``. Its default keeps idle threads spinning for a while
after each parallel region; on a machine whose cores are shared (a notebook beside a
server, two services, a CI box) the spinning threads steal the cores that image decode
threads and other processes need. Measured here (issue 14, 2 cores, two busy-loop
processes beside): ``encode_image`` ran 11 images/s spinning against 29 passive, and a
single text query's p99 went from 46 ms to 187 ms.

So ``import shopclip`` sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it) before
anything imports torch. If torch was imported first, the pool is already configured and
the setting cannot take effect in this process: :func:`thread_policy` reports that and
:func:`warn_if_spinning` logs it once; set ``OMP_WAIT_POLICY=PASSIVE`` in the environment
(or import shopclip first) to fix it. ONNX Runtime sessions get the equivalent session
options (:func:`session_options`: no spinning in the intra- or inter-op pools).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

POLICY_ENV = "OMP_WAIT_POLICY"
PASSIVE = "PASSIVE"
# Recorded by apply_default_policy(): was torch already imported when shopclip set the policy?
_STATE: dict[str, Any] = {"applied": False, "torch_was_loaded": None, "user_value": None, "warned": False}


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, as a container or `taskset` sets it), at least 1."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def apply_default_policy() -> None:
    """Set the passive wait policy for this process unless the user chose one (call before torch loads)."""
    if _STATE["applied"]:
        return
    _STATE["applied"] = True
    _STATE["torch_was_loaded"] = "torch" in sys.modules
    _STATE["user_value"] = os.environ.get(POLICY_ENV)
    os.environ.setdefault(POLICY_ENV, PASSIVE)


def thread_policy() -> dict[str, Any]:
    """What the OpenMP pool of this process runs with, and why."""
    value = os.environ.get(POLICY_ENV)
    late = bool(_STATE["torch_was_loaded"]) and _STATE["user_value"] is None
    return {
        "omp_wait_policy": value,
        "set_by": "user" if _STATE["user_value"] is not None else ("shopclip" if _STATE["applied"] else None),
        # torch read the environment before shopclip could set it: its threads spin by default.
        "effective": not late,
    }


def warn_if_spinning() -> None:
    """Log once when torch was imported before shopclip without a wait policy in the environment."""
    if _STATE["warned"] or thread_policy()["effective"]:
        return
    _STATE["warned"] = True
    log.warning("torch was imported before shopclip, so its OpenMP threads keep spinning when idle "
                "(slow on a shared machine); set OMP_WAIT_POLICY=PASSIVE in the environment or "
                "import shopclip before torch")


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime session options: `threads` intra-op threads (default: torch's count), no spinning."""
    import onnxruntime as ort

    if threads is None:
        import torch

        threads = torch.get_num_threads()
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only: the exporter's graphs trigger harmless warnings
    return so
