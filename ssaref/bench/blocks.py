"""The timing loop of the benchmark: engines in turn, a block of steps each (``time_blocks``).

It imports nothing of ssaref, so that it can time any ``step`` callables, an older checkout's engines too
(``validation/bench_cpu.py`` times a "before" commit with it).

Why blocks and not single steps in turn.  On a machine with few cores every thread pool keeps spinning for a while
after its work (OpenBLAS's workers about 0.1 s, torch's OpenMP workers likewise), so the step that follows another
engine's shares the cores with that engine's spinning workers.  Alternating single steps timed exactly that: on the
2-core machine of ``validation/results/bench_cpu.md`` torch's LeNet step measured 66-72 ms right after an ssaref
step and 7 ms alone, SSA's MLP step 12 ms right after torch's and 7.8 ms alone.  Here each engine first runs
``block_warmup`` untimed steps, and more until ``settle`` seconds have passed (its own pool takes the cores back,
the others' go idle), and then ``block`` timed ones; the engines take turns block by block, so slow drifts of the
machine still fall on all of them alike.
"""

from __future__ import annotations

import time

__all__ = ["time_blocks"]


def time_blocks(engines, *, repeats, warmup=3, block=5, block_warmup=2, settle=0.25, clock=time.perf_counter):
    """Seconds of every timed step of each engine: ``{label: [s, ...]}`` with ``repeats`` entries each.

    Parameters
    ----------
    engines : dict ``label -> step`` (a callable running one training step, synchronised on a device).
    repeats : timed steps per engine.
    warmup : untimed steps per engine before the first round (lazy set-up, optimiser state).
    block : timed steps per engine and turn (1 with ``block_warmup`` 0: single steps in turn).
    block_warmup : untimed steps an engine runs at the start of each of its turns, and more until ``settle``
        seconds have passed in them (the last engine's pool has stopped spinning; 0: just ``block_warmup``).
    """
    if repeats < 1 or block < 1 or warmup < 0 or block_warmup < 0:
        raise ValueError(f"time_blocks: repeats {repeats}, block {block}, warmup {warmup}, block_warmup {block_warmup}")
    for step in engines.values():
        for _ in range(warmup):
            step()
    times: dict = {label: [] for label in engines}
    while any(len(v) < repeats for v in times.values()):
        for label, step in engines.items():
            t0, n = clock(), 0
            while n < block_warmup or (n and clock() - t0 < settle):
                step()
                n += 1
            for _ in range(min(block, repeats - len(times[label]))):
                t0 = clock()
                step()
                times[label].append(clock() - t0)
    return times
