"""Data-parallel training: 2 gloo ranks spawned from pytest, compared with one process (CPU).

One spawn runs every case (`e2e_dist_worker.py`), so the file pays for two interpreter starts;
the one-process references run in this process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_token_dataset
from e2e_dist_worker import CASES, HOOK, TIMEOUT_S, run_case

from sae_lens_e2e.training.distributed import Ranks, check_split
from sae_lens_e2e.training.trainer import resolve_checkpoint

WORKER = Path(__file__).with_name("e2e_dist_worker.py")
SPAWNED = ["plain", "accum", "two_saes", "topk_warm", "full", "resumed", "nan", "cli", "kill"]
DEADLINE_S = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' records, exit codes, exit times and output; every process is reaped."""
    out = tmp_path_factory.mktemp("ranks")
    env = os.environ | {
        "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    procs, logs = [], []
    for rank in range(2):
        log = open(out / f"log{rank}.txt", "w+")  # noqa: SIM115 - closed below
        rank_env = env | {"RANK": str(rank), "LOCAL_RANK": str(rank)}
        cmd = [sys.executable, str(WORKER), str(out), *SPAWNED]
        procs.append(subprocess.Popen(cmd, env=rank_env, stdout=log, stderr=subprocess.STDOUT))
        logs.append(log)
    exited: dict[int, float] = {}
    deadline = time.monotonic() + DEADLINE_S
    try:
        while len(exited) < 2 and time.monotonic() < deadline:
            for rank, proc in enumerate(procs):
                if rank not in exited and proc.poll() is not None:
                    exited[rank] = time.monotonic()
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    text = []
    for log in logs:
        log.seek(0)
        text.append(log.read())
        log.close()
    assert len(exited) == 2, f"ranks still running after {DEADLINE_S} s:\n" + "\n".join(text)
    return out, [p.returncode for p in procs], exited, text


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same cases in this process (no torchrun environment: one rank), each run once."""
    out, done = tmp_path_factory.mktemp("one"), {}

    def run(case: str) -> dict:
        if case not in done:
            done[case] = run_case(out, case)
        return done[case]

    return run


def _record(out: Path, case: str, rank: int) -> dict:
    path = out / case / f"rank{rank}.pt"
    assert path.is_file(), f"rank {rank} did not finish case {case!r}"
    return torch.load(path, weights_only=True)


def _losses(record: dict) -> dict[int, dict[str, float]]:
    return {
        step: {k: v for k, v in values.items() if k.startswith(("losses/", "eval/"))}
        for step, values in record["logged"]
        if isinstance(step, int)
    }


def _assert_same_weights(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for hook in a:
        for name in a[hook]:
            torch.testing.assert_close(a[hook][name], b[hook][name], rtol=tol, atol=tol)


@pytest.mark.parametrize("case", ["plain", "accum", "two_saes", "topk_warm"])
def test_two_ranks_train_as_one_process(ranks, one_process, case):
    out = ranks[0]
    one = one_process(case)
    two = [_record(out, case, rank) for rank in range(2)]
    _assert_same_weights(two[0]["weights"], one["weights"])
    _assert_same_weights(two[1]["weights"], two[0]["weights"], tol=0)
    logged_one, logged_two = _losses(one), _losses(two[0])
    assert logged_two.keys() == logged_one.keys() and len(logged_one) == CASES[case]["steps"]
    for step, values in logged_one.items():
        assert logged_two[step].keys() == values.keys()
        for key, value in values.items():
            rel = 1e-5 if key.startswith("losses/") else 1e-4  # eval: after training drift
            assert logged_two[step][key] == pytest.approx(value, rel=rel, abs=1e-6), (step, key)
    assert two[1]["logged"] == []  # wandb: rank 0 only
    for key, value in one["eval"].items():
        if key == "train_wall_time_s":  # a measurement of this process, not a result
            continue
        assert two[0]["eval"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_each_rank_trains_on_its_own_half_and_only_rank_0_writes(ranks, one_process):
    out, _, _, text = ranks
    one = one_process("plain")
    two = [_record(out, "plain", rank) for rank in range(2)]
    # Same micro-batches as one process: rank 0 has the first half of each, rank 1 the rest.
    assert len(two[0]["tokens"]) == len(two[1]["tokens"]) == len(one["tokens"])
    for whole, first, second in zip(one["tokens"], *(r["tokens"] for r in two), strict=True):
        assert first.shape[0] == second.shape[0] == whole.shape[0] // 2
        assert torch.equal(torch.cat([first, second]), whole)
    counts = [sum(t.numel() for t in r["tokens"]) for r in two]
    assert counts[0] == counts[1] == sum(t.numel() for t in one["tokens"]) // 2
    trained = {tuple(row.tolist()) for t in one["tokens"] for row in t}
    assert len(trained) == sum(t.shape[0] for t in one["tokens"])  # no sequence twice
    eval_rows = {tuple(r) for r in make_token_dataset()["tokens"][:4]}
    assert not trained & eval_rows  # the held-out rows are never trained on
    assert two[0]["writes"] and two[1]["writes"] == []
    assert "e2e[e2e]" in text[0] and "e2e training finished" in text[0]
    rank1 = text[1].split("case plain done")[0]
    assert "e2e[e2e]" not in rank1 and "e2e training finished" not in rank1


def test_resume_on_two_ranks_equals_uninterrupted_and_one_rank_resumes_it(ranks, tmp_path):
    out = ranks[0]
    full, resumed = _record(out, "full", 0), _record(out, "resumed", 0)
    _assert_same_weights(resumed["weights"], full["weights"], tol=0)
    # The 2-rank checkpoint resumed by one process gives the same weights (another world size).
    one = run_case(tmp_path, "resumed", resume_from=str(out / "full/ckpt/step_000000002"))
    _assert_same_weights(one["weights"], full["weights"])


def test_resume_with_another_global_batch_is_refused(ranks, tmp_path):
    out = ranks[0]
    with pytest.raises(ValueError, match="train_batch_size_tokens=64, this run has 128"):
        run_case(
            tmp_path,
            "resumed",
            resume_from=str(out / "full/ckpt/step_000000002"),
            train_batch_size_tokens=128,
            training_tokens=128 * 4,
        )


def test_nan_on_one_rank_stops_both_at_the_same_step(ranks):
    out = ranks[0]
    errors = [_record(out, "nan", rank)["error"] for rank in range(2)]
    for error in errors:
        assert error is not None and "non-finite loss on rank(s) [1] at step 3" in error
        assert "step_000000002" in error
    assert resolve_checkpoint(out / "nan" / "ckpt").name == "step_000000002"
    assert not (out / "nan" / "out").exists()


def test_cli_under_two_ranks(ranks):
    out, _, _, text = ranks
    assert [_record(out, "cli", rank)["exit"] for rank in range(2)] == [0, 0]
    assert (out / "cli" / "out" / HOOK / "cfg.json").is_file()


def test_killed_rank_makes_the_other_exit_within_the_timeout(ranks):
    _, codes, exited, text = ranks
    assert codes[1] == -signal.SIGKILL, text[1]
    assert codes[0] != 0, text[0]
    assert exited[0] - exited[1] < TIMEOUT_S, (exited, text[0][-2000:])


def test_batch_that_does_not_split_over_ranks_is_refused():
    cfg = type("Cfg", (), {"train_batch_size_tokens": 96, "context_size": 16})()
    with pytest.raises(ValueError, match=r"6 sequences .* gradient_accumulation_steps=1 x 4 ranks"):
        check_split(cfg, 1, 8, Ranks(world_size=4))
    with pytest.raises(ValueError, match="n_eval_batches=2 cannot be shared by 3 ranks"):
        check_split(cfg, 1, 2, Ranks(world_size=3))
    check_split(cfg, 2, 3, Ranks(world_size=3))


def test_rows_are_balanced_whole_blocks():
    rows = torch.arange(10)
    shares = [Ranks(rank=r, world_size=3).rows(rows, unit=2).tolist() for r in range(3)]
    assert shares == [[0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]
    assert torch.equal(Ranks().rows(rows, unit=2), rows)
