"""Data-parallel training across processes: MPI (mpi4py) on the CPU, NCCL for CuPy arrays.

``python -m ssaref.train --distributed mpi`` under ``mpiexec -n N`` (or ``srun``) runs one replica per rank:

* every rank draws the same data order and augmentation from the run seed and takes a contiguous, disjoint shard
  of every global batch (``shard``; global batch = ``--batch-size``);
* each rank's rule computes its update directions on its shard; ``average_step`` sums ``(n_r / n) * update_r``
  over the ranks with **one allreduce per step** on one flat buffer (the loss and the correct count ride along),
  which is the update of the whole global batch for every rule here (all are means over examples of terms
  linear in the per-example signals, plus terms of the parameters alone, identical on every rank);
* every rank applies the same averaged update, so the replicas stay identical; the rules' drawn state (feedback
  matrices, brSF's per-step draws, PEPITA's F) comes from the same seed and the rank schedule decides from the
  same singular values, so it stays identical by construction (``--check-replicas K`` verifies it every K epochs
  with a hash of the parameters and the rule state across ranks);
* BatchNorm statistics are per rank (PyTorch DDP without SyncBN), or with ``--sync-bn`` those of the global batch
  (``CrossReplicaStats``: the forward pass's mean and variance and the backward pass's two means are reduced across
  the ranks, three more reductions per BatchNorm layer and step, no host read), which makes BN nets follow the
  1-rank run too;
* only rank 0 prints and writes the run file; every rank reads it to resume, with any number of ranks whose
  shards of the global batch are all non-empty.

Collectives poll non-blocking requests against a deadline (``--mpi-timeout``): a rank that died or hangs makes the
others fail with a one-line error naming the collective, then the job is aborted, instead of hanging.

GPU: with CuPy arrays, ranks are mapped to local devices (``local_rank % device count``) and the flat buffer is
reduced by NCCL (``cupy.cuda.nccl``, communicator id broadcast over MPI); without NCCL (the module missing, or
``nccl.available`` False: pip's CuPy without libnccl) the buffer is staged through host memory and reduced by MPI.
This path is correct by construction and has not run on a multi-GPU machine (docs/scaling.md says what was run).
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np

from .backend import asnumpy, get_array_module

__all__ = [
    "Comm",
    "SerialComm",
    "MPIComm",
    "DistributedError",
    "init",
    "abort_job",
    "shard",
    "check_shards",
    "average_step",
    "replica_digest",
    "local_rank",
    "local_size",
    "default_threads_per_rank",
    "CrossReplicaStats",
    "sync_batchnorm",
]


class DistributedError(RuntimeError):
    """A collective failed or timed out, or the ranks disagree (the message names the rank and the collective)."""


def local_rank() -> int:
    """This process's rank on its node, from the launcher's environment (MPICH/Hydra, Open MPI, Slurm), else 0."""
    for var in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def local_size() -> int:
    """Ranks on this node, from the launcher's environment (MPICH/Hydra, Open MPI, Slurm), else 1."""
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "LOCAL_WORLD_SIZE"):
        if os.environ.get(var, "").isdigit():
            return max(1, int(os.environ[var]))
    return 1


def default_threads_per_rank() -> int:
    """The cores this process may use, shared among the ranks of its node (no oversubscribed BLAS)."""
    from .threads import default_threads

    return max(1, default_threads() // local_size())


class Comm:
    """The collectives the training loop needs; the serial one does nothing."""

    rank, size = 0, 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_sum(self, flat, what="allreduce"):
        """Sum a flat array over the ranks (returns the summed array; may reuse ``flat``)."""
        return flat

    def allgather(self, obj, what="allgather"):
        return [obj]

    def abort(self, code: int) -> None:
        """End every rank of the job (after this rank printed its error)."""


class SerialComm(Comm):
    """One process: every collective is the identity."""


class MPIComm(Comm):
    """mpi4py's ``COMM_WORLD`` with deadline-polled collectives; NCCL for CuPy buffers when available."""

    def __init__(self, timeout: float = 600.0):
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise ValueError(
                "--distributed mpi needs mpi4py and an MPI library: pip install 'ssaref[mpi]' "
                f"(mpi4py with the mpich wheel) ({exc})"
            ) from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = float(timeout)
        if not self.timeout > 0:
            raise ValueError(f"--mpi-timeout must be > 0 seconds, got {timeout}")
        self._nccl: object = None  # not tried yet; False: no NCCL here; else the NcclCommunicator

    # -- waiting with a deadline -------------------------------------------------------------------------
    def _wait(self, req, what):
        deadline = time.monotonic() + self.timeout
        pause = 1e-5
        while not self._test(req, what):
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"rank {self.rank}: {what} did not complete within {self.timeout:g} s (another "
                    f"rank died, hangs or failed); aborting the job"
                )
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)

    def _test(self, req, what):
        try:
            return req.Test()
        except self.MPI.Exception as exc:  # a peer died: MPI reports the broken communication
            raise DistributedError(
                f"rank {self.rank}: {what} failed ({exc.Get_error_string().strip()}); another "
                f"rank died; aborting the job"
            ) from None

    def allreduce_sum(self, flat, what="allreduce"):
        xp = get_array_module(flat)
        if xp is not np:
            nccl = self._nccl_comm()
            if nccl is not None:
                return self._nccl_allreduce(nccl, flat)
            host = np.ascontiguousarray(asnumpy(flat))  # host-staged fallback
            return xp.asarray(self.allreduce_sum(host, what))
        out = np.empty_like(flat)
        self._wait(self.comm.Iallreduce(np.ascontiguousarray(flat), out, op=self.MPI.SUM), what)
        return out

    def allgather(self, obj, what="allgather"):
        # small Python objects: gather their pickles with a non-blocking exchange of sizes, then of bytes
        import pickle

        data = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
        sizes = np.zeros(self.size, dtype=np.int64)
        self._wait(self.comm.Iallgather(np.asarray([data.size], dtype=np.int64), sizes), what)
        buf = np.empty(int(sizes.sum()), dtype=np.uint8)
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._wait(self.comm.Iallgatherv(data, [buf, sizes, displs, self.MPI.BYTE]), what)
        return [pickle.loads(buf[o : o + n].tobytes()) for o, n in zip(displs, sizes)]

    def abort(self, code: int) -> None:
        self.comm.Abort(int(code))

    # -- NCCL for device buffers --------------------------------------------------------------------------
    def _nccl_comm(self):
        if self._nccl is None:
            try:
                from cupy.cuda import nccl
            except ImportError:
                nccl = None
            # pip's CuPy without libnccl imports the module fine and says so in ``available`` (False): its
            # functions are missing then (get_unique_id: AttributeError), so stage through the host instead
            if nccl is None or not getattr(nccl, "available", False):
                self._nccl = False
                return None
            uid = nccl.get_unique_id() if self.rank == 0 else None
            uid = self.allgather(uid, "NCCL id exchange")[0]
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        return self._nccl or None

    @staticmethod
    def _nccl_allreduce(nccl_comm, flat):
        import cupy as cp
        from cupy.cuda import nccl

        dtype = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}[flat.dtype]
        out = cp.empty_like(flat)
        nccl_comm.allReduce(
            flat.data.ptr, out.data.ptr, flat.size, dtype, nccl.NCCL_SUM, cp.cuda.get_current_stream().ptr
        )
        return out


_ACTIVE: list = []  # the communicator of this process's run, for aborting the job on an error


def abort_job(code: int) -> None:
    """End every rank (a failing rank calls this after printing its one-line error); nothing when serial."""
    if _ACTIVE and _ACTIVE[-1].size > 1:
        _ACTIVE[-1].abort(code)


def init(kind: str, timeout: float = 600.0, xp=np) -> Comm:
    """The communicator for ``--distributed`` ``none`` (one process) or ``mpi``; with CuPy, select the local GPU."""
    if kind == "none":
        return SerialComm()
    if kind != "mpi":
        raise ValueError(f"--distributed must be none or mpi, got {kind!r}")
    comm = MPIComm(timeout)
    _ACTIVE[:] = [comm]
    if xp is not np:
        n = xp.cuda.runtime.getDeviceCount()
        xp.cuda.Device(local_rank() % n).use()
    return comm


def shard(idx, rank: int, size: int):
    """Rank ``rank``'s contiguous part of the global batch ``idx`` (``numpy.array_split``: sizes differ by <= 1)."""
    return np.array_split(np.asarray(idx), size)[rank]


def check_shards(n: int, batch_size: int, size: int) -> None:
    """Every rank must get at least one example of every global batch (the last, short one included)."""
    last = n % batch_size or batch_size
    if min(batch_size, last) < size:
        raise ValueError(
            f"--batch-size {batch_size} over {n} examples leaves a batch of {min(batch_size, last)} "
            f"for {size} ranks; choose a batch size (and a --train-limit) so every batch has at least "
            f"one example per rank"
        )


def average_step(comm: Comm, result, y, n_global: int, keys):
    """Replace ``result.updates`` (keys ``keys``, in this order on every rank) and ``result.loss`` by their
    global-batch values ``sum_r (n_r / n) x_r``, with ``n_r = len(y)`` this rank's shard; one allreduce of one
    flat buffer, which also sums the correct predictions.  Returns the global correct count (0-d array)."""
    upd = result.updates
    first = upd[keys[0]]
    xp = get_array_module(first)
    w = len(y) / n_global
    correct = (result.logits.argmax(axis=1) == y).sum()
    extras = xp.stack([xp.asarray(result.loss * w, dtype=first.dtype), xp.asarray(correct, dtype=first.dtype)])
    flat = xp.concatenate([(upd[k] * w).reshape(-1) for k in keys] + [extras])
    flat = comm.allreduce_sum(flat, "the step's allreduce of the updates")
    o = 0
    for k in keys:
        a = upd[k]
        upd[k] = flat[o : o + a.size].reshape(a.shape)
        o += a.size
    result.loss_value = flat[o]  # the global mean loss, still an array (read with the step's others)
    return flat[o + 1]


class CrossReplicaStats:
    """BatchNorm statistics over the global batch (``--sync-bn``), for ``ops.norm.batchnorm_forward``'s ``group``.

    Forward: ``mean(local_sums, n)`` allreduces per-channel sums (mean, then variance: two reductions per
    BatchNorm layer).  Backward: ``grad_mean(local_sums, n)`` returns the global means of ``dy`` and ``dy xhat`` in
    this replica's units -- its signals are those of its own shard's mean loss, i.e. the global batch's scaled by
    ``1 / weight`` with ``weight = n_local / n_global`` (``set_batch``, called per step by the training loop), which
    ``average_step`` undoes -- one reduction per layer.  Every rank calls these in the same order (the same graph).

    No host read: the global count of a channel's values is ``n * n_global / n_local`` (every rank's ``n`` is its
    shard's examples times the same spatial size), known on the host, so the reductions carry only the sums and a
    step with ``--sync-bn`` on a GPU synchronises no more than one without (NCCL; the host-staged fallback copies
    each reduction through host memory by design).
    """

    def __init__(self, comm: Comm):
        self.comm = comm
        self.weight = 1.0 / comm.size
        self._batch: tuple | None = None  # (n_local, n_global) examples of this step
        self._count: int | None = None

    def set_batch(self, n_local: int, n_global: int) -> None:
        """This step's shard size and global batch size (the training loop calls this before the forward pass)."""
        self._batch = (int(n_local), int(n_global))
        self.weight = n_local / n_global

    def _global_count(self, n: int) -> int:
        if self._batch is None:
            return int(round(n / self.weight))
        n_local, n_global = self._batch
        if n % n_local:
            raise ValueError(f"--sync-bn: {n} values per channel is no multiple of the shard's {n_local} examples")
        return n // n_local * n_global

    def _reduce(self, sums, n, what):
        total = self._global_count(n)
        self._count = total
        return self.comm.allreduce_sum(sums.reshape(-1), what).reshape(sums.shape) / total

    def mean(self, local_sums, n):
        return self._reduce(local_sums, n, "the BatchNorm statistics (--sync-bn)")

    def count(self, n):
        """The global count of the last ``mean``'s reduction (for the unbiased running variance)."""
        return self._count if self._count is not None else n

    def grad_mean(self, local_sums, n):
        return self._reduce(local_sums * self.weight, n, "the BatchNorm backward (--sync-bn)") / self.weight


class BatchGroup:
    """The global batch seen from one rank, for a rule whose loss couples the examples of a batch (PredSim's
    similarity matrix: every pair of examples of the batch), set as ``rule.group`` by the training loop of a
    data-parallel run.  ``set_shard(n_global)`` (every step, before the rule's step) records every rank's shard
    size (``shard``'s contiguous split) and this rank's ``weight = n_local / n_global``; ``gather_rows(a)`` returns
    the global batch's ``a`` (the ranks' rows stacked in rank order, one allreduce) and this rank's first row.
    A rule whose directions hold the global batch's gradient for its own rows divides them by ``weight``, which
    ``average_step`` undoes.  Every rank calls ``gather_rows`` in the same order (the same graph)."""

    def __init__(self, comm: Comm):
        self.comm = comm
        self.weight = 1.0 / comm.size
        self.sizes: list[int] | None = None  # every rank's shard size, from set_shard

    def set_shard(self, n_global: int) -> None:
        self.sizes = [len(p) for p in np.array_split(np.arange(int(n_global)), self.comm.size)]
        self.weight = self.sizes[self.comm.rank] / int(n_global)

    def gather_rows(self, a, what="the rule's gather of the global batch"):
        if self.sizes is None:
            raise DistributedError("BatchGroup.gather_rows before set_shard")
        xp = get_array_module(a)
        off = sum(self.sizes[: self.comm.rank])
        buf = xp.zeros((sum(self.sizes),) + tuple(a.shape[1:]), dtype=a.dtype)
        buf[off : off + a.shape[0]] = a
        return self.comm.allreduce_sum(buf.reshape(-1), what).reshape(buf.shape), off


def sync_batchnorm(model, comm: Comm, extra=()):
    """Give every BatchNorm layer of ``model`` and of the layer graphs ``extra`` (a rule's ``aux_networks``; nested
    ones included) one shared ``CrossReplicaStats``."""
    stats = CrossReplicaStats(comm)

    def walk(layer):
        if layer.kind == "batchnorm":
            layer.group = stats
        for child in (getattr(layer, "children", None) or {}).values():
            walk(child)

    walk(model)
    for net in extra:
        walk(net)
    return stats


def replica_digest(model, rule) -> str:
    """sha256 of every parameter, buffer and rule-state array (host bytes, sorted keys)."""
    h = hashlib.sha256()
    for group in (dict(model.named_params()), model.buffers, rule.state):
        for k in sorted(group):
            h.update(k.encode())
            h.update(np.ascontiguousarray(asnumpy(group[k])).tobytes())
    return h.hexdigest()
