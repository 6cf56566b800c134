#!/usr/bin/python3
"""Data-parallel training of a small numpy MLP (64-32-10) on scikit-learn's bundled digits data
set (1797 8x8 images, 10 classes), read from the wheel's own data file: no download, and sklearn
itself (which would need scipy) is never imported. --data DIR reads DIR/digits.csv.gz instead (the
same format: 64 pixel columns 0..16, the label last; e.g. downloaded from S3 by an initializer).
--init FILE starts from the weights of a .npz file (w1, b1, w2, b2, as --save and
--checkpoint-dir write them) instead of the seeded ones; --save FILE has rank 0 write the final
weights there (atomically, parent directories created) for a launcher to upload.

Each rank trains on its own shard of a fixed 80/20 train/test split; every step the ranks sum
their gradients with one Allreduce and divide by the step's global sample count, so every rank
applies the same update to the same (broadcast) initial weights. Rank 0 reports progress through
the Kubeflow SDK's update_trainjob_status (a no-op outside a TrainJob with progress reporting) and
writes checkpoints (--checkpoint-dir). Exits 0 only when the final test accuracy reaches --target.

Output (tests parse these lines):
  rank 0, per epoch:   epoch E/N loss L accuracy A compute_s C allreduce_s R reported True|False
  every rank, at end:  rank R of S on HOST model sha256 HEX
  rank 0, at end:      final accuracy A target T reached|missed
                       final progress report landed|not landed   (with KUBEFLOW_TRAINER_SERVER_URL)
                       timing ranks S epochs N mean_epoch_s X mean_compute_s Y mean_allreduce_s Z
  rank 0, only with the flag:  data file PATH                      (--data, before training)
                               init from PATH sha256 HEX           (--init, before training)
                               saved PATH sha256 HEX               (--save, at end)
compute_s and allreduce_s are each the maximum over ranks of the epoch's time outside and inside
the gradient Allreduce calls; mean_epoch_s is rank 0's wall time per epoch (with --epoch-seconds
padding, if any).
"""
import argparse
import hashlib
import importlib.util
import json
import math
import os
import socket
import sys
import tempfile
import time

# One BLAS thread per rank: the ranks are the parallelism (set before numpy loads OpenBLAS).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
from mpi4py import MPI

SEED = 20240611
HIDDEN = 32
FINAL_REPORT_SECONDS = 30


def say(line, file=sys.stdout):
    """One line in one write: mpirun forwards each rank's output in the pieces written, and
    print() writes the newline apart (under Hydra the line and the next rank's merged)."""
    file.write(line + "\n")
    file.flush()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.5, help="SGD learning rate (default 0.5)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="global samples per step, split over the ranks (default 64)")
    p.add_argument("--target", type=float, default=0.90,
                   help="test accuracy to reach for exit code 0 (default 0.90)")
    p.add_argument("--checkpoint-dir",
                   help="rank 0 writes model.npz and checkpoint.json here after every epoch")
    p.add_argument("--epoch-seconds", type=float, default=0.0,
                   help="minimum wall time per epoch: sleep the rest (default 0)")
    p.add_argument("--data", metavar="DIR",
                   help="read DIR/digits.csv.gz instead of scikit-learn's bundled copy")
    p.add_argument("--init", metavar="FILE",
                   help="start from the weights in this .npz (w1, b1, w2, b2) instead of the seed")
    p.add_argument("--save", metavar="FILE",
                   help="rank 0 writes the final weights to this .npz (parent directories created)")
    args = p.parse_args()
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.epoch_seconds < 0:
        p.error("--epochs and --batch-size must be positive, --lr > 0, --epoch-seconds >= 0")
    return args


def digits_path(data_dir):
    """DIR/digits.csv.gz with --data, else sklearn/datasets/data/digits.csv.gz of the wheel.
    find_spec of a top-level package does not import it."""
    if data_dir is not None:
        path = os.path.join(data_dir, "digits.csv.gz")
        if not os.path.isfile(path):
            raise SystemExit(f"train: --data {data_dir} has no digits.csv.gz")
        return path
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("train: scikit-learn is not installed (its digits data file is needed)")
    return os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")


def load_digits(path):
    """(features scaled to [0, 1], labels) from a digits.csv.gz: 64 pixel columns (0..16) and the
    label last."""
    data = np.loadtxt(path, delimiter=",", ndmin=2)
    if data.shape[1] != 65:
        raise SystemExit(f"train: {path} has {data.shape[1]} columns, not 65 (64 pixels, label)")
    return data[:, :-1] / 16.0, data[:, -1].astype(np.int64)


def init_params():
    rng = np.random.default_rng(SEED)
    return [
        rng.normal(0.0, 1.0 / math.sqrt(64), (64, HIDDEN)),
        np.zeros(HIDDEN),
        rng.normal(0.0, 1.0 / math.sqrt(HIDDEN), (HIDDEN, 10)),
        np.zeros(10),
    ]


def load_params(path):
    """The weights of a .npz written by save_params (or a checkpoint), checked against the
    network's shapes."""
    try:
        with np.load(path) as f:
            params = [np.array(f[name], dtype=np.float64) for name in ("w1", "b1", "w2", "b2")]
    except (OSError, KeyError, ValueError) as exc:
        raise SystemExit(f"train: --init {path}: {exc}")
    want = [p.shape for p in init_params()]
    if [p.shape for p in params] != want:
        raise SystemExit(f"train: --init {path}: shapes {[p.shape for p in params]}, not {want}")
    return params


def save_params(path, params):
    """Writes the weights to path atomically (a reader never sees half a file)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    w1, b1, w2, b2 = params
    write_atomically(directory, os.path.basename(path),
                     lambda f: np.savez(f, w1=w1, b1=b1, w2=w2, b2=b2))


def forward(params, x):
    w1, b1, w2, b2 = params
    h = np.tanh(x @ w1 + b1)
    logits = h @ w2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return h, p


def gradient_sums(params, x, y, out):
    """Writes the gradients of the summed (not mean) cross-entropy over x into out (flat, in
    parameter order), then the loss sum and the sample count; a shard's empty tail gives zeros."""
    out[:] = 0.0
    if len(x) == 0:
        return
    w1, b1, w2, b2 = params
    h, p = forward(params, x)
    n = len(x)
    loss = -np.log(p[np.arange(n), y] + 1e-12).sum()
    d = p
    d[np.arange(n), y] -= 1.0
    gw2 = h.T @ d
    gb2 = d.sum(axis=0)
    dh = (d @ w2.T) * (1.0 - h * h)
    gw1 = x.T @ dh
    gb1 = dh.sum(axis=0)
    at = 0
    for g in (gw1, gb1, gw2, gb2):
        out[at:at + g.size] = g.ravel()
        at += g.size
    out[at] = loss
    out[at + 1] = n


def weights_sha256(params):
    digest = hashlib.sha256()
    for p in params:
        digest.update(np.ascontiguousarray(p, dtype=np.float64).tobytes())
    return digest.hexdigest()


def write_atomically(directory, name, write):
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide it from other users
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        os.unlink(tmp)
        raise


def checkpoint(directory, params, info):
    w1, b1, w2, b2 = params
    write_atomically(directory, "model.npz", lambda f: np.savez(f, w1=w1, b1=b1, w2=w2, b2=b2))
    body = (json.dumps(info, sort_keys=True) + "\n").encode()
    write_atomically(directory, "checkpoint.json", lambda f: f.write(body))


def progress_reporter():
    """update_trainjob_status from the Kubeflow SDK, or None (one line says why)."""
    try:
        from kubeflow.trainer.backends.kubernetes.utils import update_trainjob_status
    except Exception as exc:  # never let reporting break the training
        say(f"progress reporting off: cannot import the Kubeflow SDK: {exc!r}")
        return None
    return update_trainjob_status


def report(update, **kwargs):
    if update is None:
        return False
    try:
        return bool(update(**kwargs))
    except Exception as exc:  # the SDK promises not to raise; be sure
        say(f"progress report failed: {exc!r}")
        return False


def main():
    args = parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()

    data_path = digits_path(args.data)
    x, y = load_digits(data_path)
    order = np.random.default_rng(SEED).permutation(len(x))
    n_test = len(x) // 5
    test, train = order[:n_test], order[n_test:]
    shard = train[rank::size]  # this rank's training samples
    test_shard = test[rank::size]
    local_batch = -(-args.batch_size // size)
    steps = -(-(-(-len(train) // size)) // local_batch)  # the largest shard's batches

    params = load_params(args.init) if args.init and rank == 0 else init_params()
    for p in params:
        comm.Bcast(p, root=0)
    flat = np.empty(sum(p.size for p in params) + 2)  # gradients, loss sum, sample count
    summed = np.empty_like(flat)

    update = progress_reporter() if rank == 0 else None
    reporting = rank == 0 and bool(os.environ.get("KUBEFLOW_TRAINER_SERVER_URL"))
    if args.checkpoint_dir and rank == 0:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
    if rank == 0:
        if args.data:
            say(f"data file {data_path}")
        if args.init:
            say(f"init from {args.init} sha256 {weights_sha256(params)}")
        say(f"data digits train {len(train)} test {n_test} ranks {size} steps_per_epoch {steps} "
            f"local_batch {local_batch} lr {args.lr} epochs {args.epochs}")

    comm.Barrier()  # rank 0 imported the SDK: start the timers together
    epoch_times, compute_times, allreduce_times = [], [], []
    loss = acc = 0.0
    reported = False
    for epoch in range(1, args.epochs + 1):
        epoch_start = MPI.Wtime()
        compute = allreduce = 0.0
        mine = shard[np.random.default_rng([SEED, epoch, rank]).permutation(len(shard))]
        loss_sum = count = 0.0
        for step in range(steps):
            t0 = MPI.Wtime()
            idx = mine[step * local_batch:(step + 1) * local_batch]
            gradient_sums(params, x[idx], y[idx], flat)
            t1 = MPI.Wtime()
            comm.Allreduce(flat, summed, op=MPI.SUM)
            t2 = MPI.Wtime()
            n = summed[-1]
            if n > 0:
                at = 0
                for p in params:
                    p -= args.lr / n * summed[at:at + p.size].reshape(p.shape)
                    at += p.size
            loss_sum += summed[-2]
            count += n
            t3 = MPI.Wtime()
            compute += (t1 - t0) + (t3 - t2)
            allreduce += t2 - t1
        loss = loss_sum / count
        # Test accuracy: every rank scores its share of the test set with the same weights.
        t0 = MPI.Wtime()
        _, p = forward(params, x[test_shard])
        correct = np.array([(p.argmax(axis=1) == y[test_shard]).sum(), len(test_shard)], float)
        t1 = MPI.Wtime()
        comm.Allreduce(MPI.IN_PLACE, correct, op=MPI.SUM)
        t2 = MPI.Wtime()
        compute += t1 - t0
        allreduce += t2 - t1
        acc = correct[0] / correct[1]
        worst = np.array([compute, allreduce])
        comm.Allreduce(MPI.IN_PLACE, worst, op=MPI.MAX)
        compute, allreduce = worst
        compute_times.append(compute)
        allreduce_times.append(allreduce)

        if rank == 0:
            if args.checkpoint_dir:
                checkpoint(args.checkpoint_dir, params, {
                    "epoch": epoch, "epochs": args.epochs, "ranks": size, "loss": float(loss),
                    "accuracy": float(acc), "sha256": weights_sha256(params)})
            so_far = MPI.Wtime() - epoch_start
            per_epoch = (sum(epoch_times) + max(so_far, args.epoch_seconds)) / epoch
            reported = report(update, progress_percent=int(100 * epoch / args.epochs),
                              estimated_remaining_seconds=int(per_epoch * (args.epochs - epoch)),
                              metrics={"loss": f"{loss:.4f}", "accuracy": f"{acc:.4f}",
                                       "epoch": str(epoch)})
            say(f"epoch {epoch}/{args.epochs} loss {loss:.4f} accuracy {acc:.4f} "
                f"compute_s {compute:.4f} allreduce_s {allreduce:.4f} reported {reported}")
        rest = args.epoch_seconds - (MPI.Wtime() - epoch_start)
        if rest > 0:
            time.sleep(rest)
        # Every rank starts the next epoch together (after rank 0's checkpoint and report, and the
        # padding), outside the timers.
        comm.Barrier()
        epoch_times.append(MPI.Wtime() - epoch_start)

    say(f"rank {rank} of {size} on {socket.gethostname()} model sha256 {weights_sha256(params)}")
    code = None
    if rank == 0:
        reached = acc >= args.target
        say(f"final accuracy {acc:.4f} target {args.target:.2f} {'reached' if reached else 'missed'}")
        if reporting:
            # The SDK sends at most one update per 5 s: make sure the 100 % one lands.
            deadline = time.monotonic() + FINAL_REPORT_SECONDS
            metrics = {"loss": f"{loss:.4f}", "accuracy": f"{acc:.4f}", "epoch": str(args.epochs)}
            while update is not None and not reported and time.monotonic() < deadline:
                time.sleep(1)
                reported = report(update, progress_percent=100, estimated_remaining_seconds=0,
                                  metrics=metrics)
            say(f"final progress report {'landed' if reported else 'not landed'}")
        say(f"timing ranks {size} epochs {args.epochs} mean_epoch_s {np.mean(epoch_times):.4f} "
            f"mean_compute_s {np.mean(compute_times):.4f} "
            f"mean_allreduce_s {np.mean(allreduce_times):.4f}")
        if args.save:
            save_params(args.save, params)
            say(f"saved {args.save} sha256 {weights_sha256(params)}")
        code = 0 if reached else 1
        if not reached:
            say(f"train: test accuracy {acc:.4f} is below the target {args.target:.2f}",
                file=sys.stderr)
    return comm.bcast(code, root=0)


if __name__ == "__main__":
    sys.exit(main())
