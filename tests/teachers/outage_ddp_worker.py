"""One rank of ``test_outage.py``'s DDP test: the TRL trainer with a served teacher under DDP (gloo, CPU).

    python -m torch.distributed.run --nproc_per_node 2 tests/teachers/outage_ddp_worker.py \\
        TEACHER STUDENT DATA URL_RANK0 URL_RANK1 OUT SERVER_PID

Each rank asks its own server; rank 0 SIGKILLs rank 1's (``SERVER_PID``) after step ``KILL_AT``, so
only rank 1 sees the outage (``max_outage_s`` 4 s) while rank 0's requests keep being answered. Each
rank prints ``STOPPED rank=R step=N code=C`` when training ends with ``SystemExit``, then exits with it.
"""

from __future__ import annotations

import os
import signal
import sys

from transformers import TrainerCallback

from test_outage import KILL_AT, make_trainer


class KillServer(TrainerCallback):
    def __init__(self, pid: int):
        self.pid = pid

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == KILL_AT and int(os.environ.get("RANK", "0")) == 0:
            os.kill(self.pid, signal.SIGKILL)


def main(teacher: str, student: str, data: str, url0: str, url1: str, out: str, server_pid: str) -> None:
    url = url0 if os.environ.get("RANK") == "0" else url1
    trainer = make_trainer((teacher, student), data, out, url, max_outage_s=4.0, callbacks=[KillServer(int(server_pid))])
    try:
        trainer.train()
    except SystemExit as stop:
        print(f"STOPPED rank={os.environ.get('RANK')} step={trainer.state.global_step} code={stop.code}", flush=True)
        raise


if __name__ == "__main__":
    main(*sys.argv[1:])
