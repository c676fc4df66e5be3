"""`python -m torch.distributed.run` that dies with the process that started it (see parent_death.py).

    python -m lumen_model.torchrun --standalone --nproc_per_node=2 -m lumen_model.train ...

Used by `lumen_model.train.train_processes`; the ranks arm themselves in `lumen_model.train.main`.
"""

from __future__ import annotations

import os

from lumen_model.parent_death import AGENT_PID, STARTER_PID, arm_from_env


def main() -> None:
    arm_from_env(STARTER_PID)
    os.environ[AGENT_PID] = str(os.getpid())  # the ranks' parent
    from torch.distributed.run import main as torchrun

    torchrun()  # its arguments: sys.argv[1:]


if __name__ == "__main__":
    main()
