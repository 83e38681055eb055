#!/usr/bin/env python3
"""Holds hostile connections against one address for bench/edge.sh: SLOW slowloris sockets (half
a request head, one more header line every 3 s; re-opened whenever the proxy closes one,
as an attacker would) and IDLE keep-alive connections (one request each, then silence). Runs
for SECONDS, then prints what it held and how many slowloris sockets the proxy closed.
Loopback only; bounded by SECONDS.

Usage: hold.py HOST:PORT SLOW IDLE SECONDS
"""
import asyncio
import sys


async def slowloris(host, port, stop, closed):
    while not stop.is_set():
        try:
            r, w = await asyncio.open_connection(host, port)
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            await w.drain()
            i = 0
            while not stop.is_set():
                await asyncio.sleep(3)
                w.write(b"x-%d: y\r\n" % i)
                await w.drain()
                i += 1
                if r.at_eof():
                    break
        except (ConnectionError, OSError):
            pass
        closed[0] += 1
        await asyncio.sleep(0.05)


async def idle(host, port, stop, held):
    try:
        r, w = await asyncio.open_connection(host, port)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\nx-user: idle\r\n\r\n")
        await w.drain()
        await r.readuntil(b"\r\n\r\n")
        held[0] += 1
        await stop.wait()
        w.close()
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    slow, idle_n, secs = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    stop = asyncio.Event()
    closed, held = [0], [0]
    tasks = [asyncio.create_task(slowloris(host, port, stop, closed)) for _ in range(slow)]
    for i in range(idle_n):
        tasks.append(asyncio.create_task(idle(host, port, stop, held)))
        if i % 500 == 499:
            await asyncio.sleep(0.05)
    await asyncio.sleep(secs)
    print(f"held {held[0]} idle keep-alive connections; {slow} slowloris sockets, closed by the proxy and re-opened {closed[0]} times", flush=True)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


asyncio.run(main())
