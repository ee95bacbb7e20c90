//! The simulated PLC: its four Modbus tables, the behaviours a test can switch on (drift, heartbeats,
//! exceptions, silence, slow answers) and the line commands that change them.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinHandle;

/// The four Modbus tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Holding,
    Input,
    Coil,
    Discrete,
}

impl Table {
    fn parse(s: &str) -> Result<Table, String> {
        match s {
            "holding" | "h" => Ok(Table::Holding),
            "input" | "i" => Ok(Table::Input),
            "coil" | "coils" | "c" => Ok(Table::Coil),
            "discrete" | "d" => Ok(Table::Discrete),
            _ => Err(format!("unknown table {s:?}: expected holding, input, coil or discrete")),
        }
    }

    fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }
}

/// How registers make a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl Type {
    fn parse(s: &str) -> Result<Type, String> {
        match s {
            "u16" => Ok(Type::U16),
            "i16" => Ok(Type::I16),
            "u32" => Ok(Type::U32),
            "i32" => Ok(Type::I32),
            "f32" => Ok(Type::F32),
            _ => Err(format!("unknown type {s:?}: expected u16, i16, u32, i32 or f32")),
        }
    }

    fn words(self) -> u16 {
        match self {
            Type::U16 | Type::I16 => 1,
            _ => 2,
        }
    }
}

/// A value's place: table, address, type and word order (32-bit types: high word first unless `little`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    table: Table,
    addr: u16,
    ty: Type,
    little: bool,
}

/// A reply to a command line: `ok`, a value, or `err <why>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply(pub String);

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Default)]
struct Memory {
    words: HashMap<(Table, u16), u16>,
    bits: HashMap<(Table, u16), bool>,
    /// (table, address) -> exception code for reads that touch it.
    exceptions: HashMap<(Table, u16), u8>,
}

/// A running behaviour: (`drift` or `heartbeat`, table, address).
type TaskKey = (&'static str, Table, u16);

/// The PLC shared by the Modbus server, the command channels and the behaviour tasks.
pub struct Plc {
    mem: Mutex<Memory>,
    /// While true, requests are taken and never answered.
    silence: tokio::sync::watch::Sender<bool>,
    /// Every answer waits this long first (a slow PLC).
    delay_ms: AtomicU64,
    requests: AtomicU64,
    tasks: Mutex<HashMap<TaskKey, JoinHandle<()>>>,
}

impl fmt::Debug for Plc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plc").field("requests", &self.requests.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

/// What a read or write of the Modbus server gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Words(Vec<u16>),
    Bits(Vec<bool>),
    Exception(u8),
}

impl Plc {
    pub fn new() -> Arc<Plc> {
        Arc::new(Plc {
            mem: Mutex::new(Memory::default()),
            silence: tokio::sync::watch::channel(false).0,
            delay_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            tasks: Mutex::new(HashMap::new()),
        })
    }

    fn mem(&self) -> MutexGuard<'_, Memory> {
        self.mem.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `count` registers or bits for the Modbus server. Unset addresses read 0.
    pub fn read(&self, table: Table, addr: u16, count: u16) -> Answer {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mem = self.mem();
        let end = u32::from(addr) + u32::from(count);
        if end > 0x1_0000 {
            return Answer::Exception(0x02);
        }
        for (&(t, a), &code) in &mem.exceptions {
            if t == table && u32::from(a) >= u32::from(addr) && u32::from(a) < end {
                return Answer::Exception(code);
            }
        }
        let addrs = (u32::from(addr)..end).map(|a| a as u16);
        if table.is_bits() {
            Answer::Bits(addrs.map(|a| mem.bits.get(&(table, a)).copied().unwrap_or(false)).collect())
        } else {
            Answer::Words(addrs.map(|a| mem.words.get(&(table, a)).copied().unwrap_or(0)).collect())
        }
    }

    /// Writes from a Modbus client (holding registers and coils).
    pub fn write_words(&self, addr: u16, words: &[u16]) -> Option<u8> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut mem = self.mem();
        if usize::from(addr) + words.len() > 0x1_0000 {
            return Some(0x02);
        }
        for (i, w) in words.iter().enumerate() {
            mem.words.insert((Table::Holding, addr + i as u16), *w);
        }
        None
    }

    pub fn write_bits(&self, addr: u16, bits: &[bool]) -> Option<u8> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut mem = self.mem();
        if usize::from(addr) + bits.len() > 0x1_0000 {
            return Some(0x02);
        }
        for (i, b) in bits.iter().enumerate() {
            mem.bits.insert((Table::Coil, addr + i as u16), *b);
        }
        None
    }

    pub fn silenced(&self) -> tokio::sync::watch::Receiver<bool> {
        self.silence.subscribe()
    }

    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Relaxed))
    }

    fn set_value(&self, slot: Slot, value: f64) -> Result<(), String> {
        let words = encode(slot.ty, value)?;
        let mut mem = self.mem();
        let n = words.len() as u16;
        if u32::from(slot.addr) + u32::from(n) > 0x1_0000 {
            return Err("address out of range".into());
        }
        for (i, w) in words.iter().enumerate() {
            let i = i as u16;
            let at = if slot.little { slot.addr + (n - 1 - i) } else { slot.addr + i };
            mem.words.insert((slot.table, at), *w);
        }
        Ok(())
    }

    fn get_value(&self, slot: Slot) -> f64 {
        let mem = self.mem();
        let word = |i: u16| mem.words.get(&(slot.table, slot.addr.wrapping_add(i))).copied().unwrap_or(0);
        let (hi, lo) = if slot.little { (word(1), word(0)) } else { (word(0), word(1)) };
        let dword = (u32::from(hi) << 16) | u32::from(lo);
        match slot.ty {
            Type::U16 => f64::from(word(0)),
            Type::I16 => f64::from(word(0) as i16),
            Type::U32 => f64::from(dword),
            Type::I32 => f64::from(dword as i32),
            Type::F32 => f64::from(f32::from_bits(dword)),
        }
    }

    fn set_bit(&self, table: Table, addr: u16, on: bool) {
        self.mem().bits.insert((table, addr), on);
    }

    fn replace_task(&self, kind: &'static str, table: Table, addr: u16, task: Option<JoinHandle<()>>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = tasks.remove(&(kind, table, addr)) {
            old.abort();
        }
        if let Some(task) = task {
            tasks.insert((kind, table, addr), task);
        }
    }

    /// Runs one command line (see `--help`). Must be called within a tokio runtime (drift and heartbeat
    /// start tasks).
    pub fn command(self: &Arc<Self>, line: &str) -> Reply {
        match self.try_command(line) {
            Ok(reply) => Reply(reply),
            Err(why) => Reply(format!("err {why}")),
        }
    }

    fn try_command(self: &Arc<Self>, line: &str) -> Result<String, String> {
        let line = line.split('#').next().unwrap_or("").trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&cmd, args)) = words.split_first() else {
            return Ok("ok".into());
        };
        match (cmd, args) {
            ("set", [table, addr, rest @ ..]) => {
                let table = Table::parse(table)?;
                let addr = parse_addr(addr)?;
                if table.is_bits() {
                    let [v] = rest else { return Err("usage: set coil|discrete ADDR 0|1".into()) };
                    self.set_bit(table, addr, parse_bit(v)?);
                } else {
                    let (slot, rest) = slot(table, addr, rest)?;
                    let [v] = rest else { return Err("usage: set TABLE ADDR TYPE VALUE [little]".into()) };
                    self.set_value(slot, parse_num(v)?)?;
                }
                Ok("ok".into())
            }
            ("get", [table, addr, rest @ ..]) => {
                let table = Table::parse(table)?;
                let addr = parse_addr(addr)?;
                if table.is_bits() {
                    let on = self.mem().bits.get(&(table, addr)).copied().unwrap_or(false);
                    return Ok(if on { "1" } else { "0" }.into());
                }
                let rest = if rest.is_empty() { &["u16"][..] } else { rest };
                let (slot, _) = slot(table, addr, rest)?;
                Ok(self.get_value(slot).to_string())
            }
            ("drift", [table, addr, "off"]) | ("heartbeat", [table, addr, "off"]) => {
                let kind = if cmd == "drift" { "drift" } else { "heartbeat" };
                self.replace_task(kind, Table::parse(table)?, parse_addr(addr)?, None);
                Ok("ok".into())
            }
            ("drift", [table, addr, rest @ ..]) => {
                let table = Table::parse(table)?;
                if table.is_bits() {
                    return Err("drift works on registers".into());
                }
                let addr = parse_addr(addr)?;
                let (slot, rest) = slot(table, addr, rest)?;
                let [step, every] = rest else {
                    return Err("usage: drift TABLE ADDR TYPE STEP EVERY_MS [little]".into());
                };
                let (step, every) = (parse_num(step)?, parse_ms(every)?);
                let plc = self.clone();
                let task = tokio::spawn(async move {
                    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    loop {
                        tick.tick().await;
                        let v = plc.get_value(slot) + step;
                        // Out of the type's range: the value stays where it was (a real register saturates).
                        let _ = plc.set_value(slot, v);
                    }
                });
                self.replace_task("drift", table, addr, Some(task));
                Ok("ok".into())
            }
            ("heartbeat", [table, addr, every]) => {
                let table = Table::parse(table)?;
                let addr = parse_addr(addr)?;
                let every = parse_ms(every)?;
                let plc = self.clone();
                let task = tokio::spawn(async move {
                    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    loop {
                        tick.tick().await;
                        let mut mem = plc.mem();
                        if table.is_bits() {
                            let b = mem.bits.entry((table, addr)).or_insert(false);
                            *b = !*b;
                        } else {
                            let w = mem.words.entry((table, addr)).or_insert(0);
                            *w = w.wrapping_add(1);
                        }
                    }
                });
                self.replace_task("heartbeat", table, addr, Some(task));
                Ok("ok".into())
            }
            ("exception", [table, addr, code]) => {
                let table = Table::parse(table)?;
                let addr = parse_addr(addr)?;
                let mut mem = self.mem();
                if *code == "off" {
                    mem.exceptions.remove(&(table, addr));
                } else {
                    let code = parse_code(code)?;
                    mem.exceptions.insert((table, addr), code);
                }
                Ok("ok".into())
            }
            ("silence", [on @ ("on" | "off")]) => {
                self.silence.send_replace(*on == "on");
                Ok("ok".into())
            }
            ("delay", [ms]) => {
                self.delay_ms.store(parse_ms(ms)?.as_millis() as u64, Ordering::Relaxed);
                Ok("ok".into())
            }
            ("stats", []) => Ok(format!("requests {}", self.requests.load(Ordering::Relaxed))),
            _ => Err(format!("cannot understand {line:?} (see --help)")),
        }
    }
}

fn slot<'a>(table: Table, addr: u16, rest: &'a [&'a str]) -> Result<(Slot, &'a [&'a str]), String> {
    let Some((ty, rest)) = rest.split_first() else { return Err("missing type (u16, i16, u32, i32, f32)".into()) };
    let ty = Type::parse(ty)?;
    let (little, rest) = match rest.split_last() {
        Some((&"little", init)) => (true, init),
        Some((&"big", init)) => (false, init),
        _ => (false, rest),
    };
    if u32::from(addr) + u32::from(ty.words()) > 0x1_0000 {
        return Err("address out of range".into());
    }
    Ok((Slot { table, addr, ty, little }, rest))
}

fn encode(ty: Type, v: f64) -> Result<Vec<u16>, String> {
    let int = |lo: f64, hi: f64| -> Result<i64, String> {
        let r = v.round();
        if r < lo || r > hi || !r.is_finite() {
            return Err(format!("{v} does not fit the type"));
        }
        Ok(r as i64)
    };
    Ok(match ty {
        Type::U16 => vec![int(0.0, 65535.0)? as u16],
        Type::I16 => vec![int(-32768.0, 32767.0)? as i16 as u16],
        Type::U32 => split(int(0.0, 4_294_967_295.0)? as u32),
        Type::I32 => split(int(-2_147_483_648.0, 2_147_483_647.0)? as i32 as u32),
        Type::F32 => split((v as f32).to_bits()),
    })
}

fn split(d: u32) -> Vec<u16> {
    vec![(d >> 16) as u16, d as u16]
}

fn parse_addr(s: &str) -> Result<u16, String> {
    s.parse().map_err(|_| format!("bad address {s:?}: expected 0..65535"))
}

fn parse_num(s: &str) -> Result<f64, String> {
    s.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| format!("bad number {s:?}"))
}

fn parse_bit(s: &str) -> Result<bool, String> {
    match s {
        "1" | "on" | "true" => Ok(true),
        "0" | "off" | "false" => Ok(false),
        _ => Err(format!("bad bit {s:?}: expected 0 or 1")),
    }
}

fn parse_ms(s: &str) -> Result<Duration, String> {
    let ms: u64 = s.trim_end_matches("ms").parse().map_err(|_| format!("bad milliseconds {s:?}"))?;
    if ms == 0 {
        return Err("milliseconds must be more than 0".into());
    }
    Ok(Duration::from_millis(ms))
}

fn parse_code(s: &str) -> Result<u8, String> {
    let code = match s.strip_prefix("0x") {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    };
    code.filter(|c| *c != 0 && *c < 0x80).ok_or_else(|| format!("bad exception code {s:?}: expected 1..127"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn set_get_and_read() {
        let plc = Plc::new();
        assert_eq!(plc.command("set holding 100 f32 72.5").0, "ok");
        assert_eq!(plc.command("get h 100 f32").0, "72.5");
        let bits = 72.5f32.to_bits();
        assert_eq!(plc.read(Table::Holding, 100, 2), Answer::Words(vec![(bits >> 16) as u16, bits as u16]));
        assert_eq!(plc.command("set h 10 u32 65538 little").0, "ok");
        assert_eq!(plc.read(Table::Holding, 10, 2), Answer::Words(vec![2, 1]));
        assert_eq!(plc.command("set input 3 i16 -2").0, "ok");
        assert_eq!(plc.read(Table::Input, 3, 1), Answer::Words(vec![0xFFFE]));
        assert_eq!(plc.command("set coil 5 1  # pump on").0, "ok");
        assert_eq!(plc.read(Table::Coil, 4, 3), Answer::Bits(vec![false, true, false]));
        assert_eq!(plc.command("get c 5").0, "1");
    }

    #[tokio::test]
    async fn exceptions_cover_the_reads_that_touch_them() {
        let plc = Plc::new();
        plc.command("exception h 7 4");
        assert_eq!(plc.read(Table::Holding, 6, 2), Answer::Exception(4));
        assert_eq!(plc.read(Table::Holding, 8, 2), Answer::Words(vec![0, 0]));
        assert_eq!(plc.read(Table::Input, 7, 1), Answer::Words(vec![0]));
        plc.command("exception h 7 off");
        assert_eq!(plc.read(Table::Holding, 7, 1), Answer::Words(vec![0]));
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_and_drift_run_until_switched_off() {
        let plc = Plc::new();
        plc.command("heartbeat h 1 100");
        plc.command("set h 2 f32 10");
        plc.command("drift h 2 f32 0.5 100");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(plc.command("get h 1").0, "3");
        assert_eq!(plc.command("get h 2 f32").0, "11.5");
        plc.command("heartbeat h 1 off");
        plc.command("drift h 2 off");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(plc.command("get h 1").0, "3");
        assert_eq!(plc.command("get h 2 f32").0, "11.5");
    }

    #[tokio::test]
    async fn bad_commands_say_why() {
        let plc = Plc::new();
        assert_eq!(plc.command("set h 1 u16 70000").0, "err 70000 does not fit the type");
        assert_eq!(
            plc.command("set x 1 u16 1").0,
            "err unknown table \"x\": expected holding, input, coil or discrete"
        );
        assert_eq!(plc.command("frobnicate").0, "err cannot understand \"frobnicate\" (see --help)");
        assert_eq!(plc.command("exception h 1 0").0, "err bad exception code \"0\": expected 1..127");
        assert_eq!(plc.command("").0, "ok");
    }
}
