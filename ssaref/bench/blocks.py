"""The timing loop of the benchmark: engines in turn, a block of steps each (``time_blocks``).

It imports nothing of ssaref, so that it can time any ``step`` callables, an older checkout's engines too
(``validation/bench_cpu.py`` times a "before" commit with it).

Why blocks and not single steps in turn.  On a machine with few cores every thread pool keeps spinning for a while
after its work (OpenBLAS's workers about 0.1 s, torch's OpenMP workers likewise), so the step that follows another
engine's shares the cores with that engine's spinning workers.  Alternating single steps timed exactly that: on the
2-core machine of ``validation/results/bench_cpu.md`` torch's LeNet step measured 66-72 ms right after an ssaref
step and 7 ms alone, SSA's MLP step 12 ms right after torch's and 7.8 ms alone.  Here the machine idles ``settle``
seconds before each turn (every pool stops spinning), the engine runs ``block_warmup`` untimed steps and then
``block`` timed ones; the engines take turns block by block, so slow drifts of the machine still fall on all of
them alike.  The steps an engine runs are the same whatever the clock says, so which of them are timed is fixed:
with ``block_warmup`` 0 every step after the warm-up is, and a mean over them counts a rule's periodic extra work
(SSA's eq. (4) angle step every 50th step, 0.3.0's retraction every 10th) in its true proportion.
"""

from __future__ import annotations

import time

__all__ = ["time_blocks"]


def time_blocks(
    engines, *, repeats, warmup=3, block=5, block_warmup=2, settle=0.25, clock=time.perf_counter, sleep=time.sleep
):
    """Seconds of every timed step of each engine: ``{label: [s, ...]}`` with ``repeats`` entries each.

    Parameters
    ----------
    engines : dict ``label -> step`` (a callable running one training step, synchronised on a device).
    repeats : timed steps per engine.
    warmup : untimed steps per engine before the first round (lazy set-up, optimiser state).
    block : timed steps per engine and turn (1 with ``block_warmup`` 0 and ``settle`` 0: single steps in turn).
    block_warmup : untimed steps an engine runs at the start of each of its turns (0: every step after ``warmup``
        is timed, so a mean counts every step, e.g. a rule's periodic extra work, in its true proportion).
    settle : seconds the machine idles before each turn, so that the last engine's thread pool has stopped
        spinning (OpenBLAS's workers spin about 0.1 s); the number of steps is the same whatever the clock says.
    """
    if repeats < 1 or block < 1 or warmup < 0 or block_warmup < 0 or settle < 0:
        raise ValueError(
            f"time_blocks: repeats {repeats}, block {block}, warmup {warmup}, block_warmup {block_warmup}, "
            f"settle {settle}"
        )
    for step in engines.values():
        for _ in range(warmup):
            step()
    times: dict = {label: [] for label in engines}
    while any(len(v) < repeats for v in times.values()):
        for label, step in engines.items():
            if settle:
                sleep(settle)
            for _ in range(block_warmup):
                step()
            for _ in range(min(block, repeats - len(times[label]))):
                t0 = clock()
                step()
                times[label].append(clock() - t0)
    return times
