#!/usr/bin/env python3
"""Checks that a proxy is sticky: KEYS x-user keys, each asked ROUNDS times over keep-alive,
must each get one X-Upstream (the upstream's name) every time, and the keys must spread over
more than one upstream. Prints the spread; exits 1 when a key moved or nothing spread.
Loopback only; bounded by KEYS x ROUNDS requests.

Usage: sticky.py HOST:PORT [KEYS] [ROUNDS]
"""
import collections
import http.client
import sys

host, port = sys.argv[1].rsplit(":", 1)
keys = int(sys.argv[2]) if len(sys.argv) > 2 else 200
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
conn = http.client.HTTPConnection(host, int(port), timeout=5)
seen = {}
moved = 0
for _ in range(rounds):
    for k in range(keys):
        conn.request("GET", "/", headers={"x-user": f"user-{k}"})
        r = conn.getresponse()
        r.read()
        up = r.getheader("X-Upstream")
        if r.status != 200 or up is None:
            print(f"sticky.py: user-{k}: status {r.status}, X-Upstream {up}")
            sys.exit(1)
        if seen.setdefault(k, up) != up:
            moved += 1
spread = collections.Counter(seen.values())
print(f"{keys} keys x {rounds}: {moved} moved; spread {dict(sorted(spread.items()))}")
sys.exit(1 if moved or len(spread) < 2 else 0)
