"""An independent Modbus peer for otpatch's health-probe tests: pymodbus serving registers as a PLC would.

Modes:
  tcp --port P              pymodbus Modbus TCP server on 127.0.0.1:P
  rtu --device DEV [--baud B --parity N|E|O --stopbits 1|2]
                            pymodbus Modbus RTU server on a serial device (a socat pty in the tests)
  silent --port P           a TCP listener that accepts connections, reads requests and never answers

Prints "ready" on stdout once it serves. Then reads commands on stdin, one per line, and answers "ok" (or
"err <why>") to each, so a test knows a change is in place before it goes on:

  set h|i ADDR u16|i16|u32|i32|f32 VALUE   holding/input register(s), 32-bit types high word first
  set c|d ADDR 0|1                         coil / discrete input
  heartbeat h|i ADDR MS                    add 1 to the u16 register every MS milliseconds
  heartbeat h|i ADDR off                   stop that heartbeat
  exception h|i|c|d ADDR CODE              reads touching ADDR answer Modbus exception CODE
  exception h|i|c|d ADDR off

Exits when stdin closes, so a test that dies takes its peer with it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys
import threading

SIZE = 1000  # registers (and bits) per table, addresses 0..999
FC_TABLE = {1: "c", 2: "d", 3: "h", 4: "i"}


class Plc:
    """What the tests set; applied to pymodbus's registers on every access (its documented `action` hook)."""

    def __init__(self) -> None:
        self.values: dict[str, dict[int, int]] = {"h": {}, "i": {}, "c": {}, "d": {}}
        self.exceptions: dict[str, dict[int, int]] = {"h": {}, "i": {}, "c": {}, "d": {}}
        self.heartbeats: dict[tuple[str, int], asyncio.Task] = {}
        self.lock = threading.Lock()

    async def action(self, fc, start, address, count, registers, set_values):
        table = FC_TABLE.get(fc)
        if table is None:
            return None
        with self.lock:
            for addr, code in self.exceptions[table].items():
                if address <= addr < address + count:
                    from pymodbus.constants import ExcCodes

                    return ExcCodes(code)
            for addr, value in self.values[table].items():
                if table in ("h", "i"):
                    registers[addr - start] = value
                else:
                    idx, bit = addr // 16 - start, addr % 16
                    if value:
                        registers[idx] |= 1 << bit
                    else:
                        registers[idx] &= ~(1 << bit)
        return None

    def command(self, line: str, loop: asyncio.AbstractEventLoop) -> str:
        words = line.split()
        if not words:
            return "ok"
        cmd, args = words[0], words[1:]
        if cmd == "set" and len(args) >= 3 and args[0] in ("h", "i"):
            table, addr, ty = args[0], int(args[1]), args[2]
            regs = encode(ty, args[3])
            with self.lock:
                for i, reg in enumerate(regs):
                    self.values[table][addr + i] = reg
            return "ok"
        if cmd == "set" and len(args) == 3 and args[0] in ("c", "d"):
            with self.lock:
                self.values[args[0]][int(args[1])] = int(args[2]) & 1
            return "ok"
        if cmd == "heartbeat" and len(args) == 3:
            key = (args[0], int(args[1]))
            if key in self.heartbeats:
                self.heartbeats.pop(key).cancel()
            if args[2] != "off":
                period = int(args[2]) / 1000.0
                self.heartbeats[key] = loop.create_task(self.beat(key, period))
            return "ok"
        if cmd == "exception" and len(args) == 3:
            with self.lock:
                if args[2] == "off":
                    self.exceptions[args[0]].pop(int(args[1]), None)
                else:
                    self.exceptions[args[0]][int(args[1])] = int(args[2], 0)
            return "ok"
        return f"err unknown command: {line}"

    async def beat(self, key: tuple[str, int], period: float) -> None:
        table, addr = key
        while True:
            await asyncio.sleep(period)
            with self.lock:
                self.values[table][addr] = (self.values[table].get(addr, 0) + 1) & 0xFFFF


def encode(ty: str, text: str) -> list[int]:
    if ty == "u16":
        return [int(text) & 0xFFFF]
    if ty == "i16":
        return list(struct.unpack(">H", struct.pack(">h", int(text))))
    if ty == "u32":
        return list(struct.unpack(">HH", struct.pack(">I", int(text))))
    if ty == "i32":
        return list(struct.unpack(">HH", struct.pack(">i", int(text))))
    if ty == "f32":
        return list(struct.unpack(">HH", struct.pack(">f", float(text))))
    raise ValueError(f"unknown type {ty}")


def device(plc: Plc):
    from pymodbus.simulator import DataType, SimData, SimDevice

    coils = [SimData(0, values=[False] * SIZE, datatype=DataType.BITS)]
    discrete = [SimData(0, values=[False] * SIZE, datatype=DataType.BITS)]
    holding = [SimData(0, count=SIZE, values=0, datatype=DataType.REGISTERS)]
    inputs = [SimData(0, count=SIZE, values=0, datatype=DataType.REGISTERS)]
    # id=0: answer every unit id, as a single PLC behind its own address does.
    return SimDevice(0, simdata=(coils, discrete, holding, inputs), action=plc.action)


def stdin_commands(loop: asyncio.AbstractEventLoop, plc: Plc, done: asyncio.Event) -> None:
    """Reads commands in a thread (stdin is blocking) and runs them on the event loop."""
    for line in sys.stdin:
        fut = asyncio.run_coroutine_threadsafe(run_command(plc, line.strip(), loop), loop)
        try:
            reply = fut.result(timeout=10)
        except Exception as exc:  # a bad command must not kill the PLC
            reply = f"err {exc}"
        print(reply, flush=True)
    loop.call_soon_threadsafe(done.set)


async def run_command(plc: Plc, line: str, loop: asyncio.AbstractEventLoop) -> str:
    return plc.command(line, loop)


async def silent(port: int, done: asyncio.Event) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Keep the connection open and read whatever comes: the client sees a PLC that never answers.
        while await reader.read(4096):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", port, family=socket.AF_INET)
    print("ready", flush=True)
    async with server:
        await done.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["tcp", "rtu", "silent"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--device", default="")
    parser.add_argument("--baud", type=int, default=19200)
    parser.add_argument("--parity", default="E", choices=["N", "E", "O"])
    parser.add_argument("--stopbits", type=int, default=1, choices=[1, 2])
    args = parser.parse_args()

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    plc = Plc()
    threading.Thread(target=stdin_commands, args=(loop, plc, done), daemon=True).start()

    if args.mode == "silent":
        await silent(args.port, done)
        return

    from pymodbus.server import ModbusSerialServer, ModbusTcpServer

    if args.mode == "tcp":
        server = ModbusTcpServer(device(plc), address=("127.0.0.1", args.port))
    else:
        server = ModbusSerialServer(
            device(plc),
            port=args.device,
            baudrate=args.baud,
            parity=args.parity,
            stopbits=args.stopbits,
            bytesize=8,
        )
    await server.serve_forever(background=True)
    print("ready", flush=True)
    await done.wait()
    await server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
