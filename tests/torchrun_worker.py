"""`jade` as torchrun starts it, with test hooks set through the environment (not a test).

    torchrun --standalone --nproc-per-node 2 tests/torchrun_worker.py train ...

- JADE_TEST_WEIGHTS=DIR: when training completes, each rank writes DIR/rank<k>.sha256, a hash of
  its model's state dict (weights and BatchNorm statistics).
- JADE_TEST_KILL=RANK:EPOCH: that rank SIGKILLs itself at the start of that epoch (1-based).
- JADE_TEST_NAN=RANK:STEP: that rank's kl_match term is NaN from its STEP-th step on (1-based).
- JADE_TEST_NO_DATA=RANK: loading the data fails on that rank alone (as if its machine lacked it).
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path

import jadecli.objective
from jadecli import engine
from jadecli.cli import main
from jadecli.errors import DataError

THIS_RANK = int(os.environ.get("RANK", "0"))


def weights_hash(model) -> str:
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


if os.environ.get("JADE_TEST_WEIGHTS"):
    complete = engine._complete

    def spy(s, seconds):
        out = Path(os.environ["JADE_TEST_WEIGHTS"]) / f"rank{THIS_RANK}.sha256"
        out.write_text(weights_hash(s.trainer.eval_model))
        return complete(s, seconds)

    engine._complete = spy

if os.environ.get("JADE_TEST_KILL"):
    rank, epoch = (int(v) for v in os.environ["JADE_TEST_KILL"].split(":"))
    train_one_epoch = engine.train_one_epoch

    def killer(t, e, reporter):
        if rank == THIS_RANK and e + 1 == epoch:
            os.kill(os.getpid(), signal.SIGKILL)
        return train_one_epoch(t, e, reporter)

    engine.train_one_epoch = killer

if os.environ.get("JADE_TEST_NAN"):
    rank, at = (int(v) for v in os.environ["JADE_TEST_NAN"].split(":"))
    real = jadecli.objective.jade_terms
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["n"] += 1
        if rank == THIS_RANK and calls["n"] >= at:
            terms["kl_match"] = terms["kl_match"] * float("nan")
        return terms

    jadecli.objective.jade_terms = poisoned

if os.environ.get("JADE_TEST_NO_DATA"):
    rank = int(os.environ["JADE_TEST_NO_DATA"])
    load = engine.training_data

    def missing(cfg, reporter):
        if rank == THIS_RANK:
            raise DataError(f"{cfg.data_dir}/synth-street: no such folder on this machine")
        return load(cfg, reporter)

    engine.training_data = missing

if __name__ == "__main__":
    sys.argv[0] = "jade"
    sys.exit(main())
