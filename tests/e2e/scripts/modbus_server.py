#!/usr/bin/env python3
"""A Modbus TCP server (pymodbus) holding a battery's registers, for the agent's Modbus tests.

Usage: modbus_server.py PORT UNIT TABLE=ADDR:VALUE[,ADDR:VALUE...] ...
  TABLE is "hr" (holding registers) or "ir" (input registers); values are 16-bit words.
Prints "ready <port>" on stdout once it listens on 127.0.0.1.
"""
import asyncio
import logging
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import StartAsyncTcpServer

logging.getLogger("pymodbus").setLevel(logging.ERROR)


def block(words):
    size = max(list(words) + [0]) + 2
    values = [0] * size
    for addr, value in words.items():
        values[addr] = value & 0xFFFF
    # pymodbus offsets data blocks by one: protocol address N is block address N + 1.
    return ModbusSequentialDataBlock(1, values)


async def main():
    port, unit = int(sys.argv[1]), int(sys.argv[2])
    tables = {"hr": {}, "ir": {}}
    for spec in sys.argv[3:]:
        table, pairs = spec.split("=", 1)
        for pair in pairs.split(","):
            a, v = pair.split(":")
            tables[table][int(a)] = int(v, 0)
    device = ModbusDeviceContext(hr=block(tables["hr"]), ir=block(tables["ir"]))
    context = ModbusServerContext(devices={unit: device}, single=False)

    async def announce():
        await asyncio.sleep(0.3)
        print(f"ready {port}", flush=True)

    asyncio.get_running_loop().create_task(announce())
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


if __name__ == "__main__":
    asyncio.run(main())
