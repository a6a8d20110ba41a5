#!/bin/sh
# bench/run.sh: the whole benchmark behind `make bench`. It builds lmtpgate
# and lmtpbench, runs
#   1. the emulated network's relay alone (what it adds and costs);
#   2. a real Cyrus 3.6 murder on loopback (needs root and Cyrus, as
#      installed by `make deps`) whose backends and master are across that
#      emulated network, at one-way delays of 0, 0.5 and 2 ms: Cyrus's own
#      LMTP proxy (a), lmtpgate on the frontend's mailboxes.db (b, and any
#      variants given with --gate-extra) and the backends' lmtpd directly
#      across the same relays (d), under the headline load (2 recipients on
#      2 backends, 1 KiB) and the mixed load; then 5 MiB single-recipient
#      messages at 2 ms; each run twice in alternating order, the best
#      kept, and a run disturbed by other programs on the machine again;
#      and draws the plot (gnuplot);
#   3. lmtpgate against null backends (its own ceiling, added latency,
#      1,000 connections, a 1,000,000-mailbox database rewritten under load);
#   4. the 1,000,000-mailbox index in process;
#   5. the Go benchmarks (allocations per message, index build and lookup);
# and writes bench/results.md and bench/network.png. Work files go to
# $BENCH_DIR (default: a new temporary directory), which is kept for
# inspection. Arguments are passed to `lmtpbench lab`, e.g.
#   bench/run.sh --gate-extra 'verify=backends: {verify_rcpt: true}'
# to measure a variant of lmtpgate's configuration beside run b.
#
# Environment: BENCH_MESSAGES (messages per murder run, default 2000),
# BENCH_DELAYS (one-way delays, default 0,500us,2ms), BENCH_BIG (5 MiB
# messages per large-message run, default 30), BENCH_REPEAT (measurements
# of every murder run, the best kept, default 2), BENCH_DURATION (each
# null-backend run, default 8s), RESULTS (output file, default
# bench/results.md; the plot goes beside it).
set -eu

cd "$(dirname "$0")/.."
root=$(pwd)
work=${BENCH_DIR:-$(mktemp -d /tmp/lmtpgate-bench.XXXXXX)}
messages=${BENCH_MESSAGES:-2000}
delays=${BENCH_DELAYS:-0,500us,2ms}
big=${BENCH_BIG:-30}
repeat=${BENCH_REPEAT:-2}
duration=${BENCH_DURATION:-8s}
results=${RESULTS:-$root/bench/results.md}
plot=$(dirname "$results")/network.png
mkdir -p "$work/bin"

# Which code is measured, decided before anything is written (the results
# file itself is in the tree).
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"

started=$(date +%s)
echo "bench: building into $work/bin" >&2
go build -o "$work/bin/lmtpgate" ./cmd/lmtpgate
go build -o "$work/bin/lmtpbench" ./cmd/lmtpbench
bench=$work/bin/lmtpbench
gate=$work/bin/lmtpgate

echo "bench: the emulated network alone" >&2
"$bench" relaybench -o "$work/relay.md" >"$work/relay.out"

echo "bench: real murder across the emulated network" >&2
"$bench" lab --dir "$work/lab" --runs a,b,d --lmtpgate "$gate" \
	--conns 8 --messages "$messages" --mailboxes 10 --delays "$delays" \
	--load '2x:1/1KiB:1' \
	--load '1:50,2x:30,10:20/1KiB:80,64KiB:18,5MiB:2' \
	--big-messages "$big" --big-size 5MiB --big-delay 2ms --repeat "$repeat" \
	--relay-report "$work/relay.md" --plot "$work/lab/network.png" "$@" >"$work/lab.out"
cp "$work/lab/network.png" "$plot"

echo "bench: null backends" >&2
"$bench" ceiling --dir "$work/ceiling" --lmtpgate "$gate" --duration "$duration" >"$work/ceiling.out"

echo "bench: 1,000,000-mailbox index" >&2
"$bench" mboxdb --dir "$work/mboxdb" -o "$work/mboxdb.md" >"$work/mboxdb.out"

echo "bench: Go benchmarks" >&2
go test -run '^$' -bench '^BenchmarkDeliverNull$' -benchtime 20000x -count 3 -cpuprofile "$work/cpu-1k.out" -o "$work/front.test" ./internal/front >"$work/gobench-front.txt"
go test -run '^$' -bench '^BenchmarkDeliverNull5MiB$' -benchtime 100x -count 3 -cpuprofile "$work/cpu-5m.out" ./internal/front >>"$work/gobench-front.txt"
go test -run '^$' -bench '^BenchmarkDeliverNull$' -benchtime 20000x -count 3 ./internal/metrics >"$work/gobench-metrics.txt"
go test -run '^$' -bench '^Benchmark(Build1M|ParseAndBuild1M)$' -benchtime 3x ./internal/mboxlist >"$work/gobench-mboxlist.txt"
go test -run '^$' -bench '^BenchmarkLookup$' ./internal/mboxlist >>"$work/gobench-mboxlist.txt"
go test -run '^$' -bench '^BenchmarkIngest$' -benchtime 3x ./internal/replica >"$work/gobench-replica.txt"
go test -run '^$' -bench '^Benchmark(Lookup|LookupUntimed)$' ./internal/replica >>"$work/gobench-replica.txt"
go test -count=1 -run '^TestRSS$' -v ./internal/replica >"$work/replica-rss.txt"

{
	echo "# lmtpgate benchmark results"
	echo
	echo "Written by \`make bench\` (bench/run.sh) on $(date -u +%Y-%m-%d) from commit $commit; lmtpgate and lmtpbench were built from that commit. Every figure below comes from this one run, which took $(( $(date +%s) - started )) s; work files were in \`$work\`. The machine is described at the end of the real-murder section. Results from different machines are not comparable."
	echo
	cat "$work/lab/results.md"
	echo
	cat "$work/ceiling/results.md"
	cat "$work/mboxdb.md"
	echo
	echo "## Go benchmarks"
	echo
	echo "\`BenchmarkDeliverNull\` (internal/front): one single-recipient 1 KiB transaction through lmtpgate's LMTP server and backend pool, in one process, against a null backend; allocs/op is per message."
	echo
	echo '```'
	grep -E '^(Benchmark|cpu:)' "$work/gobench-front.txt"
	echo '```'
	echo
	echo "\`BenchmarkDeliverNull5MiB\` is the same with a 5 MiB message. Where the CPU goes (\`go tool pprof -top\`, the whole process: lmtpgate's server and pool, the load generator and the null backend), 1 KiB then 5 MiB:"
	echo
	echo '```'
	go tool pprof -top -nodecount=12 "$work/front.test" "$work/cpu-1k.out" 2>/dev/null | sed -n '/flat%/,$p'
	echo '```'
	echo
	echo '```'
	go tool pprof -top -nodecount=12 "$work/front.test" "$work/cpu-5m.out" 2>/dev/null | sed -n '/flat%/,$p'
	echo '```'
	echo
	echo "internal/metrics: the same 1 KiB benchmark with the metrics instruments off and on (the hot path's cost of metrics.listen)."
	echo
	echo '```'
	grep -E '^(Benchmark|cpu:)' "$work/gobench-metrics.txt"
	echo '```'
	echo
	echo "internal/mboxlist: index build from 1,000,000 synthetic records (Build1M), the same plus parsing a flat image (ParseAndBuild1M, with the heap the index keeps), and a lookup (mean)."
	echo
	echo '```'
	grep -E '^(Benchmark|cpu:)' "$work/gobench-mboxlist.txt"
	echo '```'
	echo
	echo "internal/replica (the master-replica source): reading a master's dump of 1,000,000 mailboxes from memory into a new list (Ingest: first, and a re-dump while the old list is kept); a lookup in that list, each timed alone with the percentiles of all (Lookup: idle, and while new lists are built from a dump arriving at twice the rate a Cyrus master sends one), and untimed (LookupUntimed; its clock case is what timing each lookup adds)."
	echo
	echo '```'
	grep -E '^(Benchmark|cpu:)' "$work/gobench-replica.txt"
	echo '```'
	echo
	echo "Resident memory of a replica holding 1,000,000 mailboxes dumped by a fake master over loopback (TestRSS, in a child process of its own): dump_ms is the time from the stream's start to the list's readiness; rss after the dump, and after a re-dump (hwm, the peak, includes both lists while the second was built)."
	echo
	echo '```'
	grep -oE '(dump_ms|rss_kib_[a-z]+|hwm_kib_[a-z]+|heap_kib_[a-z]+|mailboxes)=[0-9]+' "$work/replica-rss.txt" | paste -sd' '
	echo '```'
	echo
	echo "## Large messages"
	echo
	echo "A message larger than lmtp.spool_memory_limit (default 1 MiB) is spooled to an unlinked file as soon as it passes the limit (internal/spool); the in-memory part is dropped then, and each backend reads the file through its own reader. A 5 MiB message is therefore held in memory at most once, and only up to the limit. The 5 MiB messages of the default mix above go through this path."
	if [ -f bench/analysis.md ]; then
		echo
		cat bench/analysis.md
	fi
} >"$results"
echo "bench: wrote $results" >&2
