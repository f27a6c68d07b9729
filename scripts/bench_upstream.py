#!/usr/bin/env python3
"""Counts the signing calls an OpenBao received, from its file audit log.

    bench_upstream.py AUDIT_LOG FROM_LINE

Reads the audit entries after line FROM_LINE and prints JSON: the number of
`pki/sign/*` requests, the first and last one's time, and the most calls in
any one- and five-second window (sliding, not aligned to the clock), which
a token bucket of rate r and burst b keeps at or below r + b and 5r + b
when the calls are counted where they are sent (here they are counted where
they arrive, a few milliseconds of delivery jitter later).
"""

import datetime
import json
import sys


def when(stamp):
    # RFC 3339 with up to nanoseconds; Python takes microseconds.
    stamp = stamp.rstrip("Z")
    if "." in stamp:
        head, frac = stamp.split(".", 1)
        stamp = head + "." + frac[:6].ljust(6, "0")
    else:
        stamp += ".000000"
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=datetime.timezone.utc).timestamp()


path, start = sys.argv[1], int(sys.argv[2])
times = []
with open(path) as f:
    for i, line in enumerate(f):
        if i < start:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        request = entry.get("request") or {}
        if entry.get("type") == "request" and "/sign/" in request.get("path", ""):
            times.append(when(entry["time"]))
times.sort()


def most_in(window):
    most, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        most = max(most, i - j + 1)
    return most


print(json.dumps({
    "calls": len(times),
    "first": times[0] if times else None,
    "last": times[-1] if times else None,
    "max_per_1s_window": most_in(1.0),
    "max_per_5s_window": most_in(5.0),
}))
