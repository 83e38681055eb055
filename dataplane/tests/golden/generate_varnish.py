#!/usr/bin/env python3
"""Regenerates the Varnish golden vectors from a real varnishd (Debian's `varnish`, 7.1.1).

Not run by CI: the vectors it writes are committed and pinned by tests/golden.rs.
Usage: python3 dataplane/tests/golden/generate_varnish.py   (needs varnishd, varnishadm)

It starts varnishd on free loopback ports with a VCL holding the shard directors described
in SCENARIOS, asks for each key's backend through `shard.backend(by=KEY, …)` in vcl_recv
(resolve=NOW; backends are never contacted), marks backends sick with
`backend.set_health`, and writes one CSV per scenario: key,alt,healthy,backend.
"""
import http.client, os, shutil, socket, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (replicas, [(backend, weight, ident-or-None)], [sick sets], alts, modes, keys)
WEIGHTS = [1, 2, 1.5, 3, 1, 0.5, 10, 1, 2.7, 1]
SCENARIOS = {
    "ten": (67, [(f"b{i}", w, "node-3.example:8080" if i == 3 else None) for i, w in enumerate(WEIGHTS)],
            [[], ["b6"], ["b2", "b6", "b9"]], [0, 1, 2, 3, 12], ["CHOSEN", "IGNORE", "ALL"],
            [f"user-{i}" for i in range(400)]),
    "ten_many": (67, [(f"b{i}", w, "node-3.example:8080" if i == 3 else None) for i, w in enumerate(WEIGHTS)],
                 [[]], [0], ["CHOSEN"], [f"key-{i}" for i in range(10000)]),
    "dup_ident": (67, [("b0", 1, None), ("b1", 1, None), ("b2", 1, "b1"), ("b3", 2, None)],
                  [[], ["b1"]], [0, 1], ["CHOSEN"], [f"user-{i}" for i in range(300)]),
    "two_points": (1, [("b0", 1, None), ("b1", 1, None)], [[]], [0, 1], ["CHOSEN"],
                   [f"user-{i}" for i in range(100)]),
    "three_points": (1, [("b0", 1, None), ("b1", 1, None), ("b2", 1, None)], [[], ["b2"]], [0, 1, 2],
                     ["CHOSEN", "ALL"], [f"user-{i}" for i in range(200)]),
    # Idents that are prefixes of each other collide ("m-1"+"50" == "m-15"+"0"): ties are
    # broken by member order, so both orders are pinned.
    "collide": (67, [("b0", 1, "m-1"), ("b1", 1, "m-15"), ("b2", 1, "m-150"), ("b3", 1, "m-2")],
                [[], ["b1"]], [0, 1], ["CHOSEN"], [f"user-{i}" for i in range(3000)]),
    "collide_rev": (67, [("b2", 1, "m-150"), ("b1", 1, "m-15"), ("b0", 1, "m-1"), ("b3", 1, "m-2")],
                    [[], ["b1"]], [0, 1], ["CHOSEN"], [f"user-{i}" for i in range(3000)]),
    "int_keys": (67, [(f"b{i}", 1, None) for i in range(5)], [[]], [0, 1], ["CHOSEN"],
                 ["#0", "#1", "#4294967295", "#4294967294", "#2147483648"] + [f"#{i * 2654435761 % 4294967296}" for i in range(200)]),
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def vcl():
    backends = sorted({b for sc in SCENARIOS.values() for b, _, _ in sc[1]}, key=lambda b: int(b[1:]))
    out = ["vcl 4.1;", "import directors;", "import std;"]
    for b in backends:
        out.append(f'backend {b} {{ .host = "127.0.0.1"; .port = "9"; }}')
    out.append("sub vcl_init {")
    for name, (replicas, members, *_rest) in SCENARIOS.items():
        out.append(f"  new {name} = directors.shard();")
        for b, w, ident in members:
            args = [b, f"weight={w}"]
            if ident:
                args.append(f'ident="{ident}"')
            out.append(f"  {name}.add_backend({', '.join(args)});")
        out.append(f"  {name}.reconfigure(replicas={replicas});")
    out.append("}")
    out.append("sub vcl_recv {")
    for name in SCENARIOS:
        for mode in ["CHOSEN", "IGNORE", "ALL"]:
            out.append(f'  if (req.http.dir == "{name}" && req.http.mode == "{mode}") {{')
            out.append('    if (req.http.int) {')
            out.append(f'      set req.http.be = {name}.backend(by=KEY, key=std.integer(req.http.int, 0), alt=std.integer(req.http.alt, 0), healthy={mode});')
            out.append('    } else {')
            out.append(f'      set req.http.be = {name}.backend(by=KEY, key={name}.key(req.http.key), alt=std.integer(req.http.alt, 0), healthy={mode});')
            out.append('    }')
            out.append('  }')
    out.append("  return (synth(200));")
    out.append("}")
    out.append("sub vcl_synth { set resp.http.be = req.http.be; return (deliver); }")
    return "\n".join(out) + "\n"


def main():
    work = tempfile.mkdtemp(prefix="golden-varnish-")
    port, admin = free_port(), free_port()
    secret = os.path.join(work, "secret")
    with open(secret, "w") as f:
        f.write("golden\n")
    with open(os.path.join(work, "g.vcl"), "w") as f:
        f.write(vcl())
    vd = subprocess.Popen(["varnishd", "-F", "-j", "none", "-n", os.path.join(work, "n"), "-a", f"127.0.0.1:{port}",
                           "-T", f"127.0.0.1:{admin}", "-S", secret, "-f", os.path.join(work, "g.vcl"),
                           "-s", "malloc,16m"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        adm = ["varnishadm", "-T", f"127.0.0.1:{admin}", "-S", secret]
        conn = http.client.HTTPConnection("127.0.0.1", port)
        for name, (_r, members, sick_sets, alts, modes, keys) in SCENARIOS.items():
            rows = []
            for sick in sick_sets:
                for b, _w, _i in members:
                    subprocess.run(adm + ["backend.set_health", f"boot.{b}", "sick" if b in sick else "auto"],
                                   check=True, stdout=subprocess.DEVNULL)
                for mode in modes:
                    for alt in alts:
                        for key in keys:
                            h = {"dir": name, "mode": mode, "alt": str(alt)}
                            if key.startswith("#"):
                                h["int"] = key[1:]
                            else:
                                h["key"] = key
                            conn.request("GET", "/", headers=h)
                            r = conn.getresponse()
                            r.read()
                            rows.append(f"{'+'.join(sick) or '-'},{mode.lower()},{alt},{key},{r.getheader('be') or ''}")
            path = os.path.join(HERE, f"varnish_{name}.csv")
            with open(path, "w") as f:
                f.write("# generated by generate_varnish.py from " + subprocess.run(["varnishd", "-V"], capture_output=True, text=True).stderr.splitlines()[0] + "\n")
                f.write("sick,healthy,alt,key,backend\n")
                f.write("\n".join(rows) + "\n")
            print(f"{path}: {len(rows)} rows")
    finally:
        vd.terminate()
        vd.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
