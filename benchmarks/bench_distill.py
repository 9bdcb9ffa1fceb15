"""Distilled vs from-scratch student: same data, seed, threads and wall-clock budget, run side by side.

Two child processes start together, so any load on the machine hits both alike:

  scratch   gpt3lab train   --preset demo --set <student> --time-budget B --fit-to-budget
  distill   gpt3lab distill --teacher T (same flags) --alpha A --temperature T ...

each with OMP_NUM_THREADS=--threads. Afterwards (untimed) both final checkpoints, and the teacher, are
scored over the whole held-out split (bits/byte, as `gpt3lab demo` reports it). Prints both figures, the
relative gain of the distilled student, parameter counts and the students' steps/s.

    python benchmarks/bench_distill.py --teacher runs/teacher --data data/shakespeare-bpe4096 \
        --out runs/bench-distill [--budget 300] [--threads 1] [--student model.n_layer=2 ...] \
        [--alpha 0.5] [--temperature 2] [--kd-loss forward] [--teacher-precision auto] [--init-from-teacher]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_STUDENT = ["model.n_layer=2", "model.d_model=96"]     # 47% of the demo model's parameters
# bf16 autocast, as the demo trains on CPUs that multiply bf16; the step count is re-fitted to the budget at
# every evaluation, so evaluate often (on few batches): a loaded box gives a few hundred steps in 300 s
SETTINGS = ["train.precision=bf16", "train.eval_every=25", "train.eval_batches=4"]


def launch(cmd: list[str], log: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def held_out_bpb(path: Path, data: Path) -> tuple[float, int]:
    """(bits/byte over every val window, parameters) of a checkpoint or run."""
    import gpt3lab
    from gpt3lab.data import WindowLoader
    from gpt3lab.demo import split_bpb

    model, _ = gpt3lab.load(path)
    return split_bpb(model, WindowLoader(data, "val", model.config.context, 16)), model.num_params()


def pace(run: Path) -> tuple[int, float]:
    """(optimizer steps, steps per second of training) from the run's log."""
    last = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()][-1]
    return last["step"], last["step"] / last["seconds"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/bench-distill")
    p.add_argument("--budget", type=float, default=300.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--student", nargs="*", default=DEFAULT_STUDENT, metavar="KEY=VALUE")
    p.add_argument("--set", nargs="*", default=SETTINGS, metavar="KEY=VALUE", help="settings of both runs")
    p.add_argument("--alpha", default="0.5")
    p.add_argument("--temperature", default="2.0")
    p.add_argument("--kd-loss", default="forward")
    p.add_argument("--teacher-precision", default="auto")
    p.add_argument("--init-from-teacher", action="store_true")
    args = p.parse_args()

    out, data = Path(args.out), Path(args.data)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    common = ["--data", str(data), "--preset", "demo", "--time-budget", str(args.budget), "--fit-to-budget",
              "--no-progress", *(a for s in [*args.student, *args.set] for a in ("--set", s))]
    kd = ["--teacher", args.teacher, "--alpha", args.alpha, "--temperature", args.temperature, "--kd-loss",
          args.kd_loss, "--teacher-precision", args.teacher_precision] + (
        ["--init-from-teacher"] if args.init_from_teacher else [])
    gl = [sys.executable, "-m", "gpt3lab"]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    procs = {"scratch": launch([*gl, "train", "--out", str(out / "scratch"), *common], out / "scratch.log",
                               args.threads),
             "distill": launch([*gl, "distill", "--out", str(out / "distill"), *common, *kd], out / "distill.log",
                               args.threads)}
    for name, proc in procs.items():
        if proc.wait() != 0:
            print(f"{name} failed: see {out / (name + '.log')}", file=sys.stderr)
            return 1
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    t_bpb, t_params = held_out_bpb(Path(args.teacher), data)
    (s_bpb, s_params), (d_bpb, _) = held_out_bpb(out / "scratch", data), held_out_bpb(out / "distill", data)
    (s_steps, s_pace), (d_steps, d_pace) = pace(out / "scratch"), pace(out / "distill")
    gain = (s_bpb - d_bpb) / s_bpb
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (1 min); both runs in {wall:.0f} s")
    print(f"teacher {args.teacher}: {t_params:,} params, held-out {t_bpb:.4f} bits/byte")
    print(f"student {' '.join(args.student)}: {s_params:,} params ({100 * s_params / t_params:.0f}% of the teacher)")
    print(f"  scratch  {s_steps:5d} steps  {s_pace:.3f} steps/s  held-out {s_bpb:.4f} bits/byte")
    print(f"  distill  {d_steps:5d} steps  {d_pace:.3f} steps/s  held-out {d_bpb:.4f} bits/byte  "
          f"(alpha {args.alpha}, T {args.temperature}, {args.kd_loss}, teacher {args.teacher_precision}"
          f"{', init from teacher' if args.init_from_teacher else ''})")
    print(f"  distilled is {100 * gain:+.2f}% lower bits/byte; the teacher costs "
          f"{100 * (1 - d_pace / s_pace):.0f}% of the student's steps/s; goal (>= 2% lower): "
          f"{'met' if gain >= 0.02 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
