"""A distributed script that ends as the recipes end (`cli.run_recipe`'s process-group teardown) while a collective
it started is still in flight: process 1 starts asynchronous all-reduces and drops its references to their tensors
(gloo's worker threads now hold the last ones), and process 0 joins them only once process 1 is on its way out (an
`atexit` file, or after `--patience` seconds). Launched by `tests/distributed/test_exit.py` with `torch.distributed.run
--nproc_per_node 2`: without a barrier in the teardown, process 1's worker finishes the all-reduce during the
interpreter's shutdown, frees the tensors, takes the GIL and the process aborts (SIGABRT, "terminate called without an
active exception").
"""

import argparse
import atexit
import os
import time

import torch
import torch.distributed as dist

from hf_maxsup.cli import end_process_group


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--flag", required=True, help="The file process 1 creates as it exits.")
    parser.add_argument("--patience", type=float, default=3.0, help="How long process 0 waits for the flag.")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    # As in a run: DDP keeps references to the group, so that destroying it does not join gloo's threads.
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    if dist.get_rank() == 1:
        atexit.register(lambda: open(args.flag, "w").close())  # the last exit handler: the interpreter then shuts down
        works = [dist.all_reduce(torch.ones(1000), async_op=True) for _ in range(20)]
        del works
    else:
        deadline = time.monotonic() + args.patience
        while not os.path.exists(args.flag) and time.monotonic() < deadline:
            time.sleep(0.001)
        for _ in range(20):
            dist.all_reduce(torch.ones(1000))
    end_process_group()
    del model


if __name__ == "__main__":
    main()
