#!/usr/bin/env python3
"""A JBD / Xiaoxiang BMS on a pseudo-terminal, for the agent's UART tests.

Opens a pty pair, prints "port <slave path>" on stdout, and answers read commands
(DD A5 <cmd> 00 <chk> 77) on the master side with the public test vectors of a 4S pack.
The checksum is computed here, independently of the agent: 0x10000 - sum(cmd/status, len,
payload).

The behaviour is read from MODE_FILE before every answer:
  normal   answer correctly
  flaky    alternate: a frame with a wrong checksum, then a correct frame split in pieces
  corrupt  every answer has a wrong checksum
  short    every answer stops three bytes before its end
  silent   never answer
Counters are written to MODE_FILE + ".stats" as "answers corrupted short silent".

Usage: jbd_emulator.py MODE_FILE
"""
import os
import sys
import time
import tty

# Public vectors (../shared/BRIEF.md): 15.60 V, 0 A, 4.98/5.00 Ah, SOC 100 %, 4 cells,
# 3 NTCs at 22.4 / 22.3 / 21.7 degC; cells 3.909 3.901 3.895 3.901 V.
BASIC_PAYLOAD = bytes.fromhex(
    "0618 0000 01F2 01F4 0000 2C7C 0000 0000 0000 8064 0304 030B 8B0B 8A0B 84".replace(" ", "")
)
CELLS_PAYLOAD = bytes.fromhex("0F450F3D0F370F3D")


def frame(cmd, payload, status=0, corrupt=False):
    body = bytes([status, len(payload)]) + payload
    chk = (0x10000 - sum(body)) & 0xFFFF
    if corrupt:
        chk ^= 0x0101
    return bytes([0xDD, cmd]) + body + chk.to_bytes(2, "big") + b"\x77"


def main():
    mode_file = sys.argv[1]
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    print(f"port {os.ttyname(slave)}", flush=True)
    stats = {"answers": 0, "corrupted": 0, "short": 0, "silent": 0}
    buf = b""
    flip = False
    while True:
        chunk = os.read(master, 256)
        if not chunk:
            return
        buf += chunk
        while True:
            start = buf.find(b"\xDD\xA5")
            if start < 0 or len(buf) - start < 7:
                break
            req = buf[start : start + 7]
            buf = buf[start + 7 :]
            cmd = req[2]
            if req[6] != 0x77 or cmd not in (0x03, 0x04):
                continue
            try:
                mode = open(mode_file).read().strip()
            except OSError:
                mode = "normal"
            payload = BASIC_PAYLOAD if cmd == 0x03 else CELLS_PAYLOAD
            if mode == "silent":
                stats["silent"] += 1
            elif mode == "corrupt" or (mode == "flaky" and not flip):
                os.write(master, frame(cmd, payload, corrupt=True))
                stats["corrupted"] += 1
                flip = True
            elif mode == "short":
                os.write(master, frame(cmd, payload)[:-3])
                stats["short"] += 1
            elif mode == "flaky":
                # A good frame arriving in three pieces, as a slow UART delivers it.
                f = frame(cmd, payload)
                for piece in (f[:5], f[5:20], f[20:]):
                    os.write(master, piece)
                    time.sleep(0.02)
                stats["answers"] += 1
                flip = False
            else:
                os.write(master, frame(cmd, payload))
                stats["answers"] += 1
            with open(mode_file + ".stats.tmp", "w") as s:
                s.write(
                    f"{stats['answers']} {stats['corrupted']} {stats['short']} {stats['silent']}\n"
                )
            os.replace(mode_file + ".stats.tmp", mode_file + ".stats")


if __name__ == "__main__":
    main()
