#!/usr/bin/env bash
# Director lookup figures for docs/benchmarks.md: runs the criterion lookup benchmarks RUNS
# times (default 3) and prints, per benchmark, the median and the minimum of the runs'
# estimates. One run on this 2-core VM varies by up to ±30% (other tenants, clock), so one
# run is not a figure. Usage: bench/directors.sh [RUNS] [FILTER]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
filter=${2:-'lookup|baseline'}
bin=$(cargo bench -p tether-dataplane --bench directors --no-run 2>&1 \
  | grep -o 'target/release/deps/directors-[a-z0-9]*' | head -1)
out=$(mktemp -d)
for i in $(seq "$runs"); do
  "$bin" --bench --warm-up-time 1 --measurement-time 3 "$filter" >"$out/run$i.txt" 2>&1
done
python3 - "$out" "$runs" <<'PY'
import re, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
unit = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6}
res = {}
for i in range(1, runs + 1):
    txt = open(f"{out}/run{i}.txt").read()
    for m in re.finditer(r"^(\S+)\s*\n?\s+time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", txt, re.M):
        res.setdefault(m.group(1), []).append(float(m.group(2)) * unit[m.group(3)])
print(f"{'benchmark':55} {'median ns':>10} {'min ns':>10}  runs")
for k, v in res.items():
    print(f"{k:55} {statistics.median(v):10.1f} {min(v):10.1f}  {' '.join(f'{x:.1f}' for x in v)}")
PY
