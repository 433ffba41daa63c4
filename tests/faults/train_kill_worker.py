"""The killed run of ``test_train_kill.py``: trains with checkpoints every 2 steps and SIGKILLs its own
process at the end of step ``KILL_AT`` (checkpoint-4 written, step 5 lost).

    python tests/faults/train_kill_worker.py KIND TEACHER STUDENT DATA OUT [URL]
"""

from __future__ import annotations

import os
import signal
import sys

from transformers import TrainerCallback

from test_train_kill import KILL_AT, make_trainer


class KillSelf(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    kind, teacher, student, data, out, *url = sys.argv[1:]
    make_trainer(kind, (teacher, student), data, out, url[0] if url else None, callbacks=[KillSelf()]).train()
