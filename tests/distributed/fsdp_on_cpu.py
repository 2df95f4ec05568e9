"""Test-only: run FSDP for real on a machine without GPUs.

accelerate turns FSDP on only for GPU-type backends, so on CPU an FSDP config runs as plain DDP. Relabelled as a
multi-GPU state with the device kept on the CPU, FSDP really shards (parameters become DTensors) over gloo.

    accelerate launch --config_file recipes/configs/fsdp.yaml tests/distributed/fsdp_on_cpu.py SCRIPT ARGS...

runs `SCRIPT` (a recipe or `tests/distributed/tiny_run.py`) in each process after the relabelling, with
`--accelerator_config` pointing at settings that make the training arguments keep the relabelled state.
"""

import json
import os
import runpy
import sys
import tempfile

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType


def relabel_as_multi_gpu() -> None:
    """Make accelerate's process state a multi-GPU one whose device is the CPU (gloo stays the backend)."""
    state = PartialState(cpu=True)
    state._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    # "cpu", not "cpu:0": FSDP1 compares the two and rejects the mismatch.
    state._shared_state["device"] = torch.device("cpu")


def main() -> None:
    script, *args = sys.argv[1:]
    relabel_as_multi_gpu()
    # Without use_configured_state the training arguments would reset the state they find.
    config = os.path.join(tempfile.mkdtemp(), "accelerator_config.json")
    with open(config, "w") as f:
        json.dump({"use_configured_state": True}, f)
    sys.argv = [script, *args, "--accelerator_config", config]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
