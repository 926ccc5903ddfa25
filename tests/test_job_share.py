"""Fair share between foreground work and jobs (shedder.jobs.give_way): a toggle comes first, but foreground work
that never stops slows a job to about half its speed instead of halting it. Units of work are sleeps, so that the
counts do not depend on how busy the machine is."""
import threading
import time

from shedder import jobs

UNIT = 0.01  # seconds one unit of the job's work takes


def counting_job() -> tuple[jobs.Job, list[float]]:
    """A job that does units of work, giving way before each; the times the units ended."""
    units: list[float] = []

    def work(job):
        while True:
            jobs.give_way(job)
            time.sleep(UNIT)
            units.append(time.perf_counter())

    return jobs.Job("count", work), units


def between(units: list[float], start: float, end: float) -> int:
    return sum(start <= t < end for t in units)


def test_foreground_work_that_never_stops_slows_a_job_to_its_share_but_never_halts_it():
    job, units = counting_job()
    time.sleep(1.0)
    now = time.perf_counter()
    alone = between(units, now - 1.0, now)  # units per second with nothing else running
    start = time.perf_counter()
    with jobs.foreground():  # four seconds of foreground work without a break
        time.sleep(4.0)
    end = time.perf_counter()
    busy = between(units, start, end) / (end - start)
    job.cancel()
    assert job.wait(10)
    share = busy / alone
    print(f"units per second: {alone} alone, {busy:.1f} under foreground work that never stops ({share:.0%})")
    assert 0.25 < share < 0.75, share  # about JOB_SHARE: neither starved nor ahead of the foreground work
    assert job.paused_s > 1.5


def test_an_occasional_toggle_has_the_machine_to_itself():
    job, units = counting_job()
    time.sleep(0.5)
    for _ in range(3):  # a toggle of 0.3 s, then 1 s of looking at the result
        with jobs.foreground():
            time.sleep(0.05)  # the unit in flight ends
            start = time.perf_counter()
            time.sleep(0.25)
            assert between(units, start, time.perf_counter()) == 0, "the job must pause for the toggle"
        time.sleep(1.0)
    job.cancel()
    assert job.wait(10) and job.paused_s > 3 * 0.25


def test_two_overlapping_foreground_users_do_not_starve_a_job():
    job, units = counting_job()
    time.sleep(0.5)
    stop = time.perf_counter() + 4.0

    def toggling():  # one user toggles back to back
        while time.perf_counter() < stop:
            with jobs.foreground():
                time.sleep(0.3)

    users = [threading.Thread(target=toggling), threading.Thread(target=lambda: (time.sleep(0.15), toggling()))]
    start = time.perf_counter()
    for user in users:
        user.start()
    for user in users:
        user.join()
    done = between(units, start, time.perf_counter())
    job.cancel()
    assert job.wait(10)
    assert done > 0.25 * (time.perf_counter() - start) / UNIT * 0.5, done  # a real share, not a halt
