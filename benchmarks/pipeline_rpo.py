"""RPO at a steady write rate, and the catch-up rate after an outage of the master target.

Run: python benchmarks/pipeline_rpo.py [MB/s] [seconds] [outage seconds]
Goals: RPO p99 (from a write to its application at the replica) < 5 s at 20 MB/s;
catch-up rate after an outage >= 2x the churn.

RPO: the agent writes 1 MiB every 1/rate seconds (half compressible), flushing every 0.25 s; the
sink records, for every write, the time from `write()` to the ACK saying the master target
applied it. Catch-up: the master target is stopped for the outage while the churn continues (the
process server caches it), then restarted; catch-up rate = (backlog at restart + churn during
catch-up) / time until the replica is current again.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from dr_agent.sink import ProcessServerSink
from pipeline_common import MIB, make_pki, mixed_data, services


def main() -> None:
    rate = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    outage = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
    chunks = mixed_data(64 * MIB, seed=3)
    period = MIB / (rate * 1e6)
    with tempfile.TemporaryDirectory(prefix="bench-rpo-") as tmp:
        root = Path(tmp)
        pki = make_pki(root)
        mt, ps, ps_port = services(root, pki)
        mt.start()
        ps.start()
        disk = 1024 * MIB
        sink = ProcessServerSink(disk="bench.rpo", size=disk, servers=[("127.0.0.1", ps_port)], identity=pki.agent)
        stop = threading.Event()
        written = [0]

        def churn() -> None:
            start = time.monotonic()
            i = 0
            last_flush = start
            while not stop.is_set():
                sink.write((i * MIB) % disk, chunks[i % len(chunks)])
                written[0] += MIB
                i += 1
                now = time.monotonic()
                if now - last_flush > 0.25:
                    sink.flush()
                    last_flush = now
                time.sleep(max(0.0, start + i * period - time.monotonic()))

        t = threading.Thread(target=churn, daemon=True)
        try:
            t.start()
            time.sleep(seconds)
            lags = sorted(sink.lag_samples)
            achieved = written[0] / 1e6 / seconds
            p50, p99 = statistics.median(lags), lags[int(len(lags) * 0.99) - 1]
            print(f"steady churn {achieved:.1f} MB/s for {seconds:.0f} s: RPO p50 {p50:.3f} s, p99 {p99:.3f} s "
                  "(goal p99 < 5 s)")

            mt.stop()
            w0 = written[0]
            time.sleep(outage)
            backlog = written[0] - w0
            mt.start()
            restart = time.monotonic()
            w1 = written[0]
            target = sink.seq
            while sink.applied < target:
                time.sleep(0.05)
            took = time.monotonic() - restart
            drained = backlog + (written[0] - w1)
            catch = drained / 1e6 / took
            print(f"outage {outage:.0f} s: backlog {backlog / 1e6:.0f} MB caught up in {took:.1f} s: "
                  f"{catch:.1f} MB/s = {catch / achieved:.1f}x the churn (goal >= 2x)")
        finally:
            stop.set()
            t.join(10)
            sink.close()
            ps.stop()
            mt.stop()


if __name__ == "__main__":
    main()
