"""The killed run of ``test_train_kill.py``: trains with checkpoints every 2 steps (``train_runs``) and
SIGKILLs its own process at the end of step ``KILL_AT`` (checkpoint-4 written, step 5 lost).

    python tests/faults/train_kill_worker.py KIND TEACHER STUDENT DATA OUT KILL_AT [URL | STORE]
"""

from __future__ import annotations

import os
import signal
import sys

from transformers import TrainerCallback

from train_runs import make_trainer


class KillSelf(TrainerCallback):
    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    kind, teacher, student, data, out, kill_at, *extra = sys.argv[1:]
    make_trainer(kind, (teacher, student), data, out, extra[0] if extra else None, callbacks=[KillSelf(int(kill_at))]).train()
