#!/usr/bin/env python3
"""Turns scripts/bench.sh's JSON results into docs/benchmarks.md.

The tables and the verdict on every target come from the measurements of one
run; the analysis below them is docs/benchmarks-analysis.md, kept by hand.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

ap = argparse.ArgumentParser()
ap.add_argument("results")
ap.add_argument("--command", default="scripts/bench.sh")
ap.add_argument("--duration", default="10s")
ap.add_argument("--connections", default="32")
ap.add_argument("--warmup", default="2s")
args = ap.parse_args()


def load(name):
    path = os.path.join(args.results, name + ".json")
    with open(path) as f:
        return json.load(f)


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_total():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return "%.0f GiB" % (int(line.split()[1]) / 1024 / 1024)
    return "unknown"


runs = {
    "cfssl": "cfssl serve (`/api/v1/cfssl/sign`)",
    "openbao": "OpenBao `pki/sign` (its own API)",
    "step-ca": "step-ca `/1.0/sign` (JWK provisioner, a token per request)",
    "spire": "SPIRE server `MintX509SVID` (mutual TLS, admin SVID)",
    "local-rest": "signet local, REST",
    "local-grpc": "signet local, Istio gRPC (a token per connection, as agents send)",
    "local-grpc-fresh": "signet local, Istio gRPC (a fresh token every request: worst case)",
    "direct-rest": "signet direct → OpenBao, REST",
    "delegated-rest": "signet delegated over OpenBao, REST",
    "delegated-grpc": "signet delegated over OpenBao, Istio gRPC (a token per connection)",
}


def rounds_of(name):
    out, i = [], 1
    while os.path.exists(os.path.join(args.results, "%s-r%d.json" % (name, i))):
        out.append(load("%s-r%d" % (name, i)))
        i += 1
    return out


# Every endpoint ran once per round, round-robin; its figure is its median
# round by throughput (latencies are that round's).
rounds = {name: rounds_of(name) for name in runs}
n_rounds = min(len(v) for v in rounds.values())
r = {name: sorted(v, key=lambda x: x["throughput"])[(len(v) - 1) // 2] for name, v in rounds.items()}
cfssl = r["cfssl"]["throughput"]
bao = r["openbao"]["throughput"]
ceiling = load("ceiling")
# The half-load windows, by p99; the median one is the figure.
halves = sorted((load("local-rest-half-%d" % i) for i in (1, 2, 3)),
                key=lambda h: (h.get("latency_ms") or {}).get("p99", float("inf")))
half = halves[1]
storm = load("delegated-storm")
local_storm = load("local-storm")
direct_storm = load("direct-storm")
direct_alive_doc = load("direct-storm-alive")
direct_alive = direct_alive_doc["alive"]
direct_storm_rss = direct_alive_doc.get("hwm_kb", 0) / 1024


def cpu_used(before, after, n):
    """CPU seconds per process between two cpu_json snapshots, summed over n rounds."""
    total = None
    for i in range(1, n + 1):
        a, b = load("%s-r%d" % (before, i)), load("%s-r%d" % (after, i))
        d = [y - x for x, y in zip(a, b)]
        total = d if total is None else [t + x for t, x in zip(total, d)]
    return total


pinned = {name: rounds_of(name) for name in ("openbao-pinned", "direct-pinned")}
has_pinned = all(pinned.values())
if has_pinned:
    rp = {name: sorted(v, key=lambda x: x["throughput"])[(len(v) - 1) // 2] for name, v in pinned.items()}
replica_rounds = [(a["throughput"] + b["throughput"], a, b)
                  for a, b in zip(rounds_of("replica-a"), rounds_of("replica-b"))]
budget = load("budget")
protected = {}
for mode in ("fair", "fifo"):
    protected[mode] = {
        "noisy": load("protected-%s-noisy" % mode),
        "quiet": load("protected-%s-quiet" % mode),
        "upstream": load("protected-%s-upstream" % mode),
    }
coalesce = load("coalesce")
coalesce_up = load("coalesce-upstream")


def metric(name, path):
    """The value of one line of a saved /metrics excerpt, 0 when absent."""
    try:
        with open(os.path.join(args.results, path)) as f:
            for line in f:
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
    except OSError:
        pass
    return 0.0


replicas_budget = {
    "a": load("replicas-budget-a"),
    "b": load("replicas-budget-b"),
    "upstream": load("replicas-budget-upstream"),
}

bao_cpu = cpu_used("openbao-cpu0", "openbao-cpu1", n_rounds)[0]
direct_bao_cpu, direct_signet_cpu = cpu_used("direct-cpu0", "direct-cpu1", n_rounds)
idle = {m: load(m + "-idle")["rss_kb"] / 1024 for m in ("local", "direct", "delegated")}
storm_rss = load("delegated-storm-rss")["hwm_kb"] / 1024
local_storm_rss = load("local-storm-rss")["hwm_kb"] / 1024
bao_rss = load("openbao-rss")["hwm_kb"] / 1024
startups = []
i = 1
while os.path.exists(os.path.join(args.results, "startup-%d.json" % i)):
    startups.append(load("startup-%d" % i)["ready_ms"])
    i += 1


def ratio(x, base):
    return x / base if base else float("nan")


def errors(run):
    e = run.get("errors") or {}
    return ", ".join("%s×%d" % (k, v) for k, v in sorted(e.items())) or "0"


def lat(run, key):
    l = run.get("latency_ms")
    return "%.2f" % l[key] if l else "–"


def verdict(ok):
    return "**met**" if ok else "**missed**"


out = []
w = out.append
w("# Benchmarks")
w("")
w("Generated by `scripts/bench.sh` from one run on one machine: every figure")
w("on this page comes from the same run, so the ratios compare like with like.")
w("Do not edit by hand; the analysis at the end is `docs/benchmarks-analysis.md`.")
w("")
w("## Machine and method")
w("")
run_info = load("run") if os.path.exists(os.path.join(args.results, "run.json")) else {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "commit": sh("git rev-parse --short HEAD") or "unknown"}
w("- Date: %s (start of the run); signet commit `%s`" % (run_info["date"], run_info["commit"]))
w("- CPU: %s, %d cores; memory %s; %s %s" % (
    cpu_model(), os.cpu_count(), mem_total(), platform.system(), platform.release()))
w("- Peers: %s; OpenBao %s; step-ca %s; SPIRE server %s (both built from their Go modules by"
  " `scripts/conformance-build spire stepca`)" % (
    sh("cfssl version 2>/dev/null | head -1") or "cfssl (Debian golang-cfssl)",
    sh("${SIGNET_BAO:-.tools/venv/bin/bao} version 2>/dev/null") or "(version unknown)",
    sh("grep -o 'smallstep/certificates v[^ ]*' tests/conformance/stepca/go.mod | cut -d' ' -f2") or "?",
    sh("grep -o 'spiffe/spire v[^ ]*' tests/conformance/spire/go.mod | cut -d' ' -f2") or "?"))
w("- step-ca: an EC P-256 root and intermediate made with openssl, one JWK provisioner")
w("  (`defaultTLSCertDuration`/`maxTLSCertDuration` 24h), no database (its in-memory")
w("  token store), text logging; each request carries a fresh one-time token (ES256,")
w("  `sans` = the CSR's SPIFFE ID) minted by the load generator.")
w("- SPIRE server: trust domain `cluster.local`, `KeyManager \"memory\"`, sqlite datastore,")
w("  `ca_key_type = \"ec-p256\"`, log level WARN, `admin_ids` naming the load generator's")
w("  X509-SVID (minted with `spire-server x509 mint`), which calls `SVID/MintX509SVID`")
w("  on the TCP API over mutual TLS (the server's SVID is checked against the bundle;")
w("  it names no host).")
w("- Load generator: `signet-bench load` on the same machine as the server, "
  "%s connections, %s measured after a warm-up, TLS 1.3 (HTTP/1.1 keep-alive, "
  "or one HTTP/2 connection per gRPC client), a pool of EC P-256 CSRs with a "
  "key each, 24 h certificates. gRPC requests carry a per-identity "
  "service-account JWT: one identity per connection (2,016 CSRs over %s identities, "
  "as each istio-agent keeps its connection and token), or, in the \"fresh token\" row, "
  "a new identity and token on every request; REST requests a bearer token; OpenBao "
  "requests a Vault token. The gRPC client is hyper's HTTP/2 connection with tonic's "
  "codec, the REST client hyper's HTTP/1.1 connection."
  % (args.connections, args.duration, args.connections))
w("- Command: `%s`; raw reports in `target/bench/*.json`." % args.command.strip())
w("")
w("## Crypto ceiling (one core, ECDSA P-256)")
w("")
w("| library | signs/s | verifies/s | sign + verify /s |")
w("|---|---:|---:|---:|")
for lib in ("aws-lc-rs", "ring"):
    c = ceiling[lib]
    w("| %s | %.0f | %.0f | %.0f |" % (lib, c["sign_per_s"], c["verify_per_s"], c["sign_and_verify_per_s"]))
best = max(("aws-lc-rs", "ring"), key=lambda k: ceiling[k]["sign_and_verify_per_s"])
w("")
w("A signing request needs at least one verify (the CSR) and one sign (the")
w("certificate): on 2 cores shared with the load generator and TLS, the")
pair = {k: ceiling[k]["sign_and_verify_per_s"] for k in ("aws-lc-rs", "ring")}
gap = abs(pair["aws-lc-rs"] - pair["ring"]) / max(pair.values())
if gap < 0.05:
    which = "the two are within %.0f%% of each other here (median of %s rounds each)" % (
        100 * gap, ceiling.get("rounds", "several"))
else:
    which = "the faster of the two here is %s, by %.0f%%" % (best, 100 * gap)
w("ceiling for the pair is about %.0f requests/s. signet uses aws-lc-rs; %s." % (
    2 * pair["aws-lc-rs"], which))
w("")
w("## Throughput at %s connections" % args.connections)
w("")
w("Median of %d rounds; each round ran every endpoint once, in this order." % n_rounds
  if n_rounds > 1 else "One round (`--quick`): each endpoint ran once, in this order.")
w("")
w("| endpoint | signs/s | rounds | × cfssl | × OpenBao | p50 ms | p90 ms | p99 ms | max ms | errors |")
w("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
for name, title in runs.items():
    x = r[name]
    w("| %s | %.0f | %s | %.2f | %.2f | %s | %s | %s | %s | %s |" % (
        title, x["throughput"], ", ".join("%.0f" % y["throughput"] for y in rounds[name]),
        ratio(x["throughput"], cfssl), ratio(x["throughput"], bao),
        lat(x, "p50"), lat(x, "p90"), lat(x, "p99"), lat(x, "max"),
        ", ".join(errors(y) for y in rounds[name])))
if has_pinned:
    for name, title in (("openbao-pinned", "OpenBao alone, pinned to core 0"),
                        ("direct-pinned", "signet direct → OpenBao, signet on core 1, OpenBao on core 0")):
        x = rp[name]
        w("| %s | %.0f | %s | %.2f | %.2f | %s | %s | %s | %s | %s |" % (
            title, x["throughput"], ", ".join("%.0f" % y["throughput"] for y in pinned[name]),
            ratio(x["throughput"], cfssl), ratio(x["throughput"], bao),
            lat(x, "p50"), lat(x, "p90"), lat(x, "p99"), lat(x, "max"),
            ", ".join(errors(y) for y in pinned[name])))
w("")
w("## Restart storms (%d CSRs from %d gRPC clients, each its own TLS connection)" % (
    storm.get("requests") or 0, storm["connections"]))
w("")
w("| mode | answered | wall time s | signs/s | p50 ms | p99 ms | max ms | errors | peak RSS MB |")
w("|---|---:|---:|---:|---:|---:|---:|---|---:|")
for title, x, rss in (
    ("signet local", local_storm, "%.1f" % local_storm_rss),
    ("signet delegated over OpenBao", storm, "%.1f" % storm_rss),
    ("signet direct → OpenBao", direct_storm, "%.1f" % direct_storm_rss),
):
    w("| %s | %d | %.2f | %.0f | %s | %s | %s | %s | %s |" % (
        title, x["ok"], x["elapsed_s"], x["throughput"], lat(x, "p50"), lat(x, "p99"),
        lat(x, "max"), errors(x), rss))
w("")

local_rest = r["local-rest"]["throughput"]
local_grpc = r["local-grpc"]["throughput"]
deleg_rest = r["delegated-rest"]["throughput"]
deleg_grpc = r["delegated-grpc"]["throughput"]
best_rest = max(local_rest, deleg_rest)
best_grpc = max(local_grpc, deleg_grpc)
direct_ratio = ratio(r["direct-rest"]["throughput"], bao)
storm_errors = sum((storm.get("errors") or {}).values())
retryable = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
direct_codes = set((direct_storm.get("errors") or {}).keys())
startup_ms = statistics.median(startups) if startups else float("nan")


def served_all(run):
    return run["ok"] == run.get("requests") and not run.get("errors")


def bound(per_second, burst):
    return per_second + burst


fair_up = protected["fair"]["upstream"]
fifo_up = protected["fifo"]["upstream"]
protect_ok = all(served_all(protected[m][t]) for m in protected for t in ("noisy", "quiet")) and \
    max(fair_up["max_per_5s_window"], fifo_up["max_per_5s_window"]) <= 5 * budget["budget"] + 20
quiet_fair, quiet_fifo = protected["fair"]["quiet"], protected["fifo"]["quiet"]

w("## Targets")
w("")
w("| target | required | measured | |")
w("|---|---|---|---|")
w("| REST vs cfssl serve | ≥ 2× | %.2f× (%.0f vs %.0f/s) | %s |" % (
    ratio(best_rest, cfssl), best_rest, cfssl, verdict(ratio(best_rest, cfssl) >= 2)))
w("| gRPC vs cfssl serve | ≥ 2× | %.2f× (%.0f vs %.0f/s) | %s |" % (
    ratio(best_grpc, cfssl), best_grpc, cfssl, verdict(ratio(best_grpc, cfssl) >= 2)))
for peer, title in (("step-ca", "step-ca"), ("spire", "SPIRE server")):
    p_ = r[peer]["throughput"]
    w("| REST and gRPC vs %s (reported) | – | REST %.2f×, gRPC %.2f× (%.0f and %.0f vs %.0f/s) | – |" % (
        title, ratio(best_rest, p_), ratio(best_grpc, p_), best_rest, best_grpc, p_))
w("| REST vs OpenBao `pki/sign` | ≥ 6× | %.2f× (%.0f vs %.0f/s) | %s |" % (
    ratio(best_rest, bao), best_rest, bao, verdict(ratio(best_rest, bao) >= 6)))
w("| gRPC vs OpenBao `pki/sign` | ≥ 6× | %.2f× (%.0f vs %.0f/s) | %s |" % (
    ratio(best_grpc, bao), best_grpc, bao, verdict(ratio(best_grpc, bao) >= 6)))
w("| gRPC vs REST (local) | ≥ 0.9× | %.2f× (%.0f vs %.0f/s) | %s |" % (
    ratio(local_grpc, local_rest), local_grpc, local_rest, verdict(ratio(local_grpc, local_rest) >= 0.9)))
if has_pinned:
    pinned_ratio = ratio(rp["direct-pinned"]["throughput"], rp["openbao-pinned"]["throughput"])
    w("| direct → OpenBao vs OpenBao alone, each pinned to its own core | ≥ 0.85× | %.2f× (%.0f vs %.0f/s); unpinned %.2f× (%.0f vs %.0f/s) | %s |" % (
        pinned_ratio, rp["direct-pinned"]["throughput"], rp["openbao-pinned"]["throughput"],
        direct_ratio, r["direct-rest"]["throughput"], bao, verdict(pinned_ratio >= 0.85)))
else:
    w("| direct → OpenBao vs OpenBao alone | ≥ 0.85× | %.2f× unpinned (one core: no pinned run) | %s |" % (
        direct_ratio, verdict(direct_ratio >= 0.85)))
half_errors = sum(sum((h.get("errors") or {}).values()) for h in halves)
w("| p99 at half of maximum throughput (local REST, %.0f/s offered, median of 3 windows) | < 20 ms | %s ms (windows: %s ms; p50 %s ms; %d errors) | %s |" % (
    half["rate"], lat(half, "p99"), ", ".join(lat(h, "p99") for h in halves), lat(half, "p50"), half_errors,
    verdict(half.get("latency_ms") and half["latency_ms"]["p99"] < 20 and not half_errors)))
w("| delegated storm: %d CSRs, %d clients | all answered, 0 errors, ≤ 1.5 s | %d answered, %d errors, %.2f s | %s |" % (
    storm.get("requests") or 0, storm["connections"], storm["ok"], storm_errors, storm["elapsed_s"],
    verdict(storm_errors == 0 and storm["ok"] == storm.get("requests") and storm["elapsed_s"] <= 1.5)))
w("| direct storm degrades gracefully | only retryable codes, no crash | %s; process %s | %s |" % (
    errors(direct_storm), "alive" if direct_alive else "**gone**",
    verdict(direct_alive and direct_codes <= retryable)))
w("| storm against a %d calls/s budget (burst 20) | every workload served, upstream within the budget | %d + %d served (fair), %d + %d (FIFO); most calls OpenBao received in any 5 s: %d and %d (bound %d); in any 1 s: %d and %d (bound %d, see below) | %s |" % (
    budget["budget"], protected["fair"]["noisy"]["ok"], quiet_fair["ok"], protected["fifo"]["noisy"]["ok"],
    quiet_fifo["ok"], fair_up["max_per_5s_window"], fifo_up["max_per_5s_window"], 5 * budget["budget"] + 20,
    fair_up["max_per_1s_window"], fifo_up["max_per_1s_window"], bound(budget["budget"], 20),
    verdict(protect_ok)))
w("| coalescing: 3,000 requests from 300 CSRs, ~10 in flight per CSR | fewer upstream calls than certificates | %.2f calls per certificate (%d calls, %d certificates) | %s |" % (
    ratio(coalesce_up["calls"], coalesce["ok"]), coalesce_up["calls"], coalesce["ok"],
    verdict(coalesce_up["calls"] < coalesce["ok"] and served_all(coalesce))))
w("| fair queue: the quiet tenant during the noisy tenant's storm | served well before the storm ends | quiet done in %.2f s (fair) vs %.2f s (FIFO); noisy done in %.2f s | %s |" % (
    quiet_fair["elapsed_s"], quiet_fifo["elapsed_s"], protected["fair"]["noisy"]["elapsed_s"],
    verdict(quiet_fair["elapsed_s"] < 0.5 * protected["fair"]["noisy"]["elapsed_s"])))
w("| RSS idle | ≤ 25 MB | local %.1f MB, direct %.1f MB, delegated %.1f MB | %s |" % (
    idle["local"], idle["direct"], idle["delegated"], verdict(max(idle.values()) <= 25)))
w("| RSS peak in the storm | ≤ 150 MB | %.1f MB (delegated), %.1f MB (local) | %s |" % (
    storm_rss, local_storm_rss, verdict(max(storm_rss, local_storm_rss) <= 150)))
w("| start-up to ready with existing keys | ≤ 100 ms | median %.1f ms of %d (%s) | %s |" % (
    startup_ms, len(startups), ", ".join("%.1f" % s for s in startups), verdict(startup_ms <= 100)))
w("")
w("For scale: OpenBao's own peak RSS over the whole run was %.0f MB." % bao_rss)
w("")
w("## Upstream protection")
w("")
w("A restart storm against signet direct → a second OpenBao with a file audit")
w("device, signet's backend configured with `resilience: { max_concurrency: 16,")
w("max_queued: 256, rate_limit: { per_second: %d, burst: 20, max_wait: 500ms } }`." % budget["budget"])
w("Two tenants start together: 900 gRPC clients of namespace `noisy` ask for")
w("3,000 certificates, 100 clients of namespace `quiet` for 300. Every client")
w("retries `UNAVAILABLE`/`RESOURCE_EXHAUSTED` as istio-agent does (100 ms doubling")
w("to 3.2 s, ±10%); latency is the workload's, from its first attempt to its")
w("certificate. Upstream calls are OpenBao's own count (its audit log); the")
w("budget lets signet send at most rate + burst = %d calls in any one second" % bound(budget["budget"], 20))
w("and 5 × rate + burst = %d in any five. OpenBao counts them when they arrive:" % (5 * budget["budget"] + 20))
w("a call's trip (TLS write, HTTP/2 framing, OpenBao's accept and scheduling)")
w("varies by a few milliseconds, so calls sent 5 ms apart can arrive 1 ms apart")
w("and a one-second window of arrivals can hold a few calls more than the")
w("bound; over five seconds that jitter is within the burst.")
w("")
w("| queue | tenant | served | errors | answers retried | done in s | p50 ms | p99 ms | max ms |")
w("|---|---|---:|---|---:|---:|---:|---:|---:|")
for mode, title in (("fair", "fair (`fair_queue: true`)"), ("fifo", "FIFO (`fair_queue: false`)")):
    for tenant in ("noisy", "quiet"):
        x = protected[mode][tenant]
        w("| %s | %s | %d | %s | %d | %.2f | %s | %s | %s |" % (
            title, tenant, x["ok"], errors(x), sum((x.get("retried") or {}).values()), x["elapsed_s"],
            lat(x, "p50"), lat(x, "p99"), lat(x, "max")))
w("")
w("| queue | upstream calls | certificates | calls per certificate | mean calls/s | most in any 1 s (bound) | most in any 5 s (bound) |")
w("|---|---:|---:|---:|---:|---:|---:|")
for mode in ("fair", "fifo"):
    up = protected[mode]["upstream"]
    n = protected[mode]["noisy"]["ok"] + protected[mode]["quiet"]["ok"]
    span = (up["last"] - up["first"]) if up["calls"] > 1 else float("nan")
    w("| %s | %d | %d | %.2f | %.0f | %d (%d) | %d (%d) |" % (
        mode, up["calls"], n, ratio(up["calls"], n), ratio(up["calls"] - 1, span),
        up["max_per_1s_window"], bound(budget["budget"], 20),
        up["max_per_5s_window"], 5 * budget["budget"] + 20))
w("")
w("**Coalescing.** 1,000 clients ask for 3,000 certificates made from 300 CSRs,")
w("so each CSR is in flight from about ten clients at once, against the same")
w("direct signet (budget %d calls/s, `max_wait: 2s`): %d certificates delivered" % (budget["budget"], coalesce["ok"]))
w("(errors: %s), %d upstream calls counted by OpenBao = **%.2f calls per certificate**;" % (
    errors(coalesce), coalesce_up["calls"], ratio(coalesce_up["calls"], coalesce["ok"])))
w("signet counted %d requests answered by another's call (`signet_upstream_coalesced_total`)," % (
    metric("signet_upstream_coalesced_total", "coalesce-metrics.txt")))
w("done in %.2f s." % coalesce["elapsed_s"])
w("")
w("## Scaling out")
w("")
w("Two signet processes (local mode, the same CA) on this %d-core machine," % os.cpu_count())
w("each driven by its own load generator with half of the %s connections," % args.connections)
w("against one process with all of them (the local REST row above):")
w("")
w("| | signs/s (median round) | rounds |")
w("|---|---:|---|")
w("| one replica | %.0f | %s |" % (local_rest, ", ".join("%.0f" % y["throughput"] for y in rounds["local-rest"])))
if replica_rounds:
    med = sorted(replica_rounds, key=lambda x: x[0])[(len(replica_rounds) - 1) // 2]
    w("| two replicas (sum) | %.0f (%.0f + %.0f) | %s |" % (
        med[0], med[1]["throughput"], med[2]["throughput"], ", ".join("%.0f" % x[0] for x in replica_rounds)))
w("")
rb = replicas_budget
rb_n = rb["a"]["ok"] + rb["b"]["ok"]
per_replica = budget["budget"] // budget["replicas"]
w("The call budget is per replica. Two direct replicas, each with")
w("`rate_limit: { per_second: %d, burst: 10 }`, under a storm of 1,500 CSRs each" % per_replica)
w("(500 clients each): %d certificates served (errors: %s / %s), %d upstream calls; OpenBao" % (
    rb_n, errors(rb["a"]), errors(rb["b"]), rb["upstream"]["calls"]))
w("received at most %d in any five seconds against a combined bound of %d (%d in any one" % (
    rb["upstream"]["max_per_5s_window"], budget["replicas"] * (5 * per_replica + 10), rb["upstream"]["max_per_1s_window"]))
w("second, bound %d); done in %.2f s and %.2f s." % (
    budget["replicas"] * (per_replica + 10), rb["a"]["elapsed_s"], rb["b"]["elapsed_s"]))
w("")
w("Sizing for a 50,000-pod cluster restart, from this run's figures:")
w("")
w("- **Delegated or local mode** is CPU-bound: one replica on this machine")
w("  answered the 10,000-CSR storm at %.0f/s, so 50,000 certificates take about" % storm["throughput"])
w("  %.0f s of one such replica; N replicas on their own cores divide that by N." % (50000 / max(storm["throughput"], 1)))
w("  Two replicas sharing these %d cores do not add capacity (the table above)." % os.cpu_count())
w("- **Direct mode** is bound by the upstream: the storm lasts at least")
w("  50,000 / budget seconds however many replicas run (%.0f s at %d calls/s)," % (
    50000 / budget["budget"], budget["budget"]))
w("  so give each of N replicas `per_second` = the upstream quota / N, and expect")
w("  agents to wait and retry; or use delegated mode, which asks the upstream")
w("  once per intermediate.")
w("")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_keys_report  # noqa: E402

out.extend(bench_keys_report.section(args.results))
w("## Where direct mode's time goes")
w("")
w("CPU time per certificate during the throughput runs (user + system, from")
w("`/proc/<pid>/stat`), with %s cores shared by every process:" % os.cpu_count())
w("")
w("| run | OpenBao µs/cert | signet µs/cert |")
w("|---|---:|---:|")
# The CPU counters span the warm-up and the measured window; the warm-up
# ran at about the measured rate.
warm = float(args.warmup.rstrip("s"))


def certs(name):
    return sum(x["throughput"] * (x["elapsed_s"] + warm) for x in rounds[name][:n_rounds])


bao_n, dir_n = certs("openbao"), certs("direct-rest")
w("| OpenBao alone | %.0f | – |" % (1e6 * bao_cpu / max(bao_n, 1)))
w("| signet direct → OpenBao | %.0f | %.0f |" % (
    1e6 * direct_bao_cpu / max(dir_n, 1), 1e6 * direct_signet_cpu / max(dir_n, 1)))
w("")
w("(All rounds; certificates counted over the warm-up and the window, at the measured rate.)")
w("")
analysis = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks-analysis.md")
if os.path.exists(analysis):
    with open(analysis) as f:
        w(f.read().rstrip())
        w("")
sys.stdout.write("\n".join(out))
