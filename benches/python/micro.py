"""Ember's Python API measured the way `ray microbenchmark` measures Ray, row by row, on an
embedded local cluster (`ember.init()`: a head in this process and one worker process).

    python benches/python/micro.py [--rows PATTERN] [--settle-secs S] [--startup-runs N]

`benches/python/run.sh` builds the package in release and runs this beside Ray's own
microbenchmark; read the figures there.

Rows (Ray's names in `ray/_private/ray_perf.py` in brackets; the same work, the same batch
sizes, the same multipliers):

- `single_client_get_calls` ("single client get calls (Plasma Store)"): `get` of a ref that
  `put(0)` made.
- `single_client_put_calls` ("single client put calls (Plasma Store)"): `put(0)`.
- `single_client_put_gigabytes` ("single client put gigabytes"): `put` of an 800 MB numpy
  array (100 Mi int64), counted as 0.8 GB each.
- `single_client_tasks_sync` ("single client tasks sync"): one task returning b"ok",
  submitted and awaited at a time.
- `single_client_tasks_async` ("single client tasks async"): 1,000 such tasks submitted,
  then all awaited; counted as 1,000.
- `1_1_actor_calls_sync` ("1:1 actor calls sync"): one actor, one call awaited at a time.
- `1_1_actor_calls_async` ("1:1 actor calls async"): a new actor, 1,000 calls submitted,
  then all awaited; counted as 1,000.
- `n_n_actor_calls_async` ("n:n actor calls async"): cpu_count // 2 actors (at least one);
  4 clients, each a task (asking `--task-cpus`, as the other tasks), each submit 5,000
  calls spread round-robin over them, then await theirs; counted as 20,000. As in Ray, the
  driver passes the actors' handles to the tasks.
- `1_1_async_actor_calls_async` ("1:1 async-actor calls async"): an actor whose method is
  `async def` (its calls run on its event loop), 1,000 calls submitted, then all awaited;
  counted as 1,000.

Needs as in Ray's script: its actors ask for no CPU (`num_cpus=0`), and its tasks for one
CPU each (Ray's default), so Ember's tasks here ask for `cpus=1` (`--task-cpus`; Ember's
default is no needs: pass `--task-cpus 0` for that) and its actors for nothing (Ember's
default). With no needs, a burst of tasks opens up to 64 task leases, each a thread of the one
Python executor process, and they contend for its GIL; one CPU each caps them at the
machine's CPUs, as Ray's worker processes are.

Method, as Ray's `timeit` (`ray/_private/ray_microbenchmark_helpers.py`): sleep
`--settle-secs` (Ray: 10 s, "to avoid noisy neighbours"), warm up for 1 s counting calls,
then `step = count // 10 + 1` and 4 trials, each running `step` calls at a time until 2 s
have passed; a trial's rate is multiplier × calls / its time. It prints the mean and the
population standard deviation (numpy's `np.std`) of the 4 rates, rounded to 2 places, as
"<row> per second <mean> +- <std>".

Startup, measured from outside the product (nothing in Ember is instrumented), each run in a
fresh Python process started by this script (`--startup-runs`, default 5):

- `init_to_first_result`: from just before `ember.init()` (after `import ember`) to the
  value of a first trivial task. That includes starting the head, a worker process, the
  worker joining, the task lease's grant, and the cold Python executor the first task needs
  (task executors start on first use). `import_ember` is the import, before it.
- `cold_task_executor`: in the same process, the first task's time (submit → value) minus
  the time of a task that needs a new lease but finds the executor warm. After warm tasks,
  the process sleeps 0.3 s so that its lease (given back after 100 ms idle) is gone; the
  next task then pays the lease's grant and nothing cold (the median of 5 such tasks). The
  difference is what the cold executor costs: starting `python -m ember`, loading the
  extension, connecting to the worker, importing the executor's module and unpickling the
  function. The warm sync task's median is printed beside it.
- `cold_actor`: a first actor's creation to its first call's value (a new executor process:
  the worker keeps none ready yet), and `warm_actor`: the same for a second actor once the
  worker has readied an executor for it (it starts one as soon as the first is taken); their
  difference is the cold process seen from an actor.

`--api ray` runs the startup measurements on Ray instead (`ray.init()`, the same tasks and
actors; Ray starts worker processes at init and keeps idle ones, so its "cold" figures may
find a worker already started: they are what a user sees, not a process start alone).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

# Rows in the order `ray microbenchmark` runs them.
ROWS = [
    "single_client_get_calls",
    "single_client_put_calls",
    "single_client_put_gigabytes",
    "single_client_tasks_sync",
    "single_client_tasks_async",
    "1_1_actor_calls_sync",
    "1_1_actor_calls_async",
    "n_n_actor_calls_async",
    "1_1_async_actor_calls_async",
]


def timeit(name, fn, multiplier=1, settle_secs=10.0, trials=4, trial_secs=2.0):
    """Ray's `timeit`: settle, a warm-up second, then `trials` trials of `trial_secs`."""
    time.sleep(settle_secs)
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < 1:
        fn()
        count += 1
    step = count // 10 + 1
    stats = []
    for _ in range(trials):
        start = time.perf_counter()
        count = 0
        while time.perf_counter() - start < trial_secs:
            for _ in range(step):
                fn()
            count += step
        end = time.perf_counter()
        stats.append(multiplier * count / (end - start))
    mean, sd = np.mean(stats), np.std(stats)
    print(name, "per second", round(mean, 2), "+-", round(sd, 2), flush=True)
    return mean, sd


def run_rows(args):
    import ember

    @ember.remote(cpus=args.task_cpus or None)
    def small_value():
        return b"ok"

    @ember.remote
    class Actor:
        def small_value(self):
            return b"ok"

    @ember.remote
    class AsyncActor:
        async def small_value(self):
            return b"ok"

    ember.init()
    wanted = [r for r in ROWS if not args.rows or args.rows in r]

    def row(name, fn, multiplier=1):
        if name in wanted:
            timeit(name, fn, multiplier, args.settle_secs, args.trials, args.trial_secs)

    value = ember.put(0)
    row("single_client_get_calls", lambda: ember.get(value))
    row("single_client_put_calls", lambda: ember.put(0))
    if "single_client_put_gigabytes" in wanted:
        arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)
        row("single_client_put_gigabytes", lambda: ember.put(arr), 8 * 0.1)
        del arr

    row("single_client_tasks_sync", lambda: ember.get(small_value.remote()))
    row(
        "single_client_tasks_async",
        lambda: ember.get([small_value.remote() for _ in range(1000)]),
        1000,
    )

    if "1_1_actor_calls_sync" in wanted:
        a = Actor.remote()
        row("1_1_actor_calls_sync", lambda: ember.get(a.small_value.remote()))
        ember.kill(a)
    if "1_1_actor_calls_async" in wanted:
        a = Actor.remote()
        row(
            "1_1_actor_calls_async",
            lambda: ember.get([a.small_value.remote() for _ in range(1000)]),
            1000,
        )
        ember.kill(a)

    if "n_n_actor_calls_async" in wanted:
        n, m = 5000, 4
        n_cpu = max(1, (os.cpu_count() or 2) // 2)
        actors = [Actor.remote() for _ in range(n_cpu)]

        @ember.remote(cpus=args.task_cpus or None)
        def work(actors):
            ember.get([actors[i % len(actors)].small_value.remote() for i in range(n)])

        row("n_n_actor_calls_async", lambda: ember.get([work.remote(actors) for _ in range(m)]), m * n)
        for a in actors:
            ember.kill(a)

    if "1_1_async_actor_calls_async" in wanted:
        a = AsyncActor.remote()
        row(
            "1_1_async_actor_calls_async",
            lambda: ember.get([a.small_value.remote() for _ in range(1000)]),
            1000,
        )
        ember.kill(a)
    ember.shutdown()


# --- startup, each run in a fresh process ---------------------------------------------------


def startup_child(api):
    """One fresh process's startup figures, as JSON on stdout (seconds)."""
    t0 = time.perf_counter()
    if api == "ray":
        import ray as lib

        def init():
            lib.init()

        def kill(actor):
            lib.kill(actor)

    else:
        import ember as lib

        def init():
            lib.init()

        def kill(actor):
            lib.kill(actor)

    out = {"import": time.perf_counter() - t0}

    @lib.remote
    def small_value():
        return b"ok"

    @lib.remote
    class Actor:
        def small_value(self):
            return b"ok"

    def timed(make_ref):
        start = time.perf_counter()
        lib.get(make_ref())
        return time.perf_counter() - start

    start = time.perf_counter()
    init()
    first = timed(small_value.remote)
    out["init_to_first_result"] = time.perf_counter() - start
    out["first_task"] = first
    out["warm_task"] = statistics.median(timed(small_value.remote) for _ in range(200))
    regrants = []
    for _ in range(5):
        time.sleep(0.3)
        regrants.append(timed(small_value.remote))
    out["idle_task"] = statistics.median(regrants)

    def actor_ready():
        start = time.perf_counter()
        a = Actor.remote()
        lib.get(a.small_value.remote())
        return a, time.perf_counter() - start

    first_actor, out["cold_actor"] = actor_ready()
    time.sleep(1.0)  # the worker readies an executor for the next actor meanwhile
    second_actor, out["warm_actor"] = actor_ready()
    out["warm_actor_call"] = statistics.median(
        timed(second_actor.small_value.remote) for _ in range(200)
    )
    kill(first_actor)
    kill(second_actor)
    lib.shutdown()
    print(json.dumps(out), flush=True)


def run_startup(args):
    runs = []
    for _ in range(args.startup_runs):
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--startup-child", "--api", args.api],
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"a startup run failed (exit {proc.returncode})")
        runs.append(json.loads(lines[-1]))

    def show(name, values):
        ms = [v * 1000 for v in values]
        each = ", ".join(f"{v:.2f}" for v in ms)
        print(f"{name} ms {np.mean(ms):.2f} +- {np.std(ms):.2f} (runs: {each})", flush=True)

    col = lambda k: [r[k] for r in runs]  # noqa: E731
    show("import_ember" if args.api == "ember" else "import_ray", col("import"))
    show("init_to_first_result", col("init_to_first_result"))
    show("first_task", col("first_task"))
    show("idle_task (new lease, warm executor)", col("idle_task"))
    show("warm_task", col("warm_task"))
    show("cold_task_executor (first_task - idle_task)", [r["first_task"] - r["idle_task"] for r in runs])
    show("cold_actor (creation to first result)", col("cold_actor"))
    show("warm_actor (creation to first result)", col("warm_actor"))
    show("warm_actor_call", col("warm_actor_call"))
    show("cold_actor - warm_actor", [r["cold_actor"] - r["warm_actor"] for r in runs])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", help="only rows whose names contain this (as Ray's TESTS_TO_RUN)")
    p.add_argument("--settle-secs", type=float, default=10.0, help="sleep before each row (Ray: 10)")
    p.add_argument("--task-cpus", type=float, default=1.0, help="CPUs each task asks (Ray's: 1)")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--trial-secs", type=float, default=2.0)
    p.add_argument("--startup-runs", type=int, default=5, help="fresh processes for startup (0: none)")
    p.add_argument("--no-rows", action="store_true", help="startup figures only")
    p.add_argument("--api", choices=["ember", "ray"], default="ember", help="startup figures of")
    p.add_argument("--startup-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.startup_child:
        startup_child(args.api)
        return
    if not args.no_rows:
        if args.api != "ember":
            raise SystemExit("the rows are Ember's; Ray's come from `ray microbenchmark`")
        run_rows(args)
    if args.startup_runs > 0:
        run_startup(args)


if __name__ == "__main__":
    main()
