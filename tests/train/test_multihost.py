"""Two local processes (jax.distributed, gloo) × 2 devices: a SIGTERM to one process saves the
same step in both, the pair resumes from it and ends equal to one process; a dead peer fails the
other fast."""

import time

import tiny_runs


def test_two_processes_match_one_across_an_agreed_sigterm_save(
    tmp_path, straight_run, compile_cache
):
    """SIGTERM to process 1 only: both save the same step and exit 143; the pair resumed from it
    ends equal to one uninterrupted process (6 steps, same global batch)."""
    started = time.monotonic()
    processes = tiny_runs.start_pair(
        tmp_path, "--step_sleep", "0.4", "--checkpoint_every", "100", cache_dir=compile_cache
    )
    tiny_runs.wait_for_progress(tmp_path, 1, 2)
    processes[1].send_signal(tiny_runs.SIGTERM)
    for process in processes:
        code, output = tiny_runs.finish(process, timeout=120)
        assert code == 143, output[-3000:]
    stopped = tiny_runs.progress(tmp_path, 0)
    assert tiny_runs.progress(tmp_path, 1) == stopped
    assert 2 <= stopped < 6
    assert tiny_runs.complete_steps(tmp_path) == [stopped]
    dump = tmp_path / "out.npz"
    processes = tiny_runs.start_pair(tmp_path, "--dump", str(dump), cache_dir=compile_cache)
    for process in processes:
        code, output = tiny_runs.finish(process, timeout=120)
        assert code == 0, output[-3000:]
    resumed = tiny_runs.load(dump)
    assert int(resumed["start_step"]) == stopped
    tiny_runs.assert_same(resumed, straight_run, atol=1e-6)
    assert time.monotonic() - started < 120


def test_dead_peer_fails_the_other_process(tmp_path, compile_cache):
    processes = tiny_runs.start_pair(
        tmp_path,
        "--step_sleep",
        "0.3",
        "--total_steps",
        "1000",
        "--checkpoint_every",
        "1000",
        cache_dir=compile_cache,
    )
    tiny_runs.wait_for_progress(tmp_path, 1, 2)
    processes[1].send_signal(tiny_runs.SIGKILL)
    killed_at = time.monotonic()
    code, output = tiny_runs.finish(processes[0], timeout=60)
    tiny_runs.finish(processes[1])
    assert code != 0, output[-3000:]
    assert time.monotonic() - killed_at < 60
