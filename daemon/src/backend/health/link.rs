//! One connection to one PLC endpoint (a Modbus TCP address or an RS-485 serial line), shared by every probe
//! that reads from it.
//!
//! Sharing matters on a plant: many PLCs accept only a handful of Modbus TCP connections, and a serial line can
//! be opened only once. Reads on a link take turns (an async mutex); each is bounded by the probe's timeout. A
//! read that times out, a broken connection or a malformed answer drops the connection (a late answer would
//! otherwise be taken for the next request's), and reconnecting backs off from 100 ms to 5 s. A Modbus exception
//! is a proper answer: the connection stays.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use otpatch_common::policy::{Parity, RegisterKind};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::check::fmt_response;
use super::decode::Data;
use otpatch_common::units::format_duration;

/// First wait before reconnecting after a failure; doubled per failure up to [`BACKOFF_CAP`].
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Why a read gave no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// No answer within the probe's timeout.
    Timeout(Duration),
    /// The PLC answered with a Modbus exception.
    Exception(u8),
    /// The answer could not be understood, or did not fit the request.
    Malformed(String),
    /// The connection broke (reset, closed, I/O error).
    Io(String),
    /// Connecting (or opening the serial device) failed.
    Connect(String),
    /// The link is down and waiting before it reconnects.
    Down { last: String, retry_in: Duration },
    /// Another probe's read on the same link did not finish in time.
    Busy(Duration),
}

impl ReadError {
    /// Whether the connection must be dropped: after these, what comes next on it cannot be trusted.
    fn breaks_link(&self) -> bool {
        matches!(self, ReadError::Timeout(_) | ReadError::Malformed(_) | ReadError::Io(_))
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Timeout(d) => write!(f, "no response within {}", format_duration(*d)),
            ReadError::Exception(code) => write!(f, "Modbus exception 0x{code:02X} ({})", exception_name(*code)),
            ReadError::Malformed(why) => write!(f, "malformed response: {why}"),
            ReadError::Io(why) => write!(f, "connection lost: {why}"),
            ReadError::Connect(why) => write!(f, "cannot connect: {why}"),
            ReadError::Down { last, retry_in } => {
                write!(f, "not connected ({last}), reconnecting in {}", fmt_response(*retry_in))
            }
            ReadError::Busy(d) => {
                write!(f, "another read on the same connection did not finish within {}", format_duration(*d))
            }
        }
    }
}

/// The names the Modbus specification gives the exception codes.
pub(crate) fn exception_name(code: u8) -> &'static str {
    match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x08 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

/// One read request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub unit: u8,
    pub kind: RegisterKind,
    pub address: u16,
    pub count: u16,
}

/// An open connection that can read.
#[async_trait]
pub(crate) trait Transport: Send {
    async fn read(&mut self, req: Request) -> Result<Data, ReadError>;
}

/// Opens connections to one endpoint.
#[async_trait]
pub(crate) trait Connector: Send + Sync {
    async fn connect(&self) -> io::Result<Box<dyn Transport>>;
}

struct LinkState {
    conn: Option<Box<dyn Transport>>,
    /// Set while a request is on the wire: if the read's future is dropped half-way (the observation ended),
    /// the next user finds it set and reconnects instead of reading a stale answer.
    in_flight: bool,
    /// Failures since the last answer; sets the backoff.
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

/// A shared connection to one endpoint, reconnecting with capped backoff.
pub(crate) struct Link {
    /// `tcp 10.0.5.10:502` or `rtu /dev/ttyUSB0`.
    pub name: String,
    connector: Box<dyn Connector>,
    state: Mutex<LinkState>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Link {
    pub fn new(name: String, connector: Box<dyn Connector>) -> Self {
        Link {
            name,
            connector,
            state: Mutex::new(LinkState {
                conn: None,
                in_flight: false,
                failures: 0,
                retry_at: None,
                last_error: None,
            }),
        }
    }

    /// Reads once, bounded by `timeout` for connecting and for the answer (and for waiting for the link, so a
    /// hung PLC holds up only the probes that read from it, and those for at most their timeout).
    /// Returns the data and the response time (request sent to answer received).
    ///
    /// A connection kept from an earlier read may have been closed by the PLC meanwhile (it restarted, or was
    /// restored from a checkpoint while the link sat idle between windows): when it fails with an I/O error,
    /// the read is tried once more on a fresh connection before it counts as failed.
    pub async fn read(&self, req: Request, timeout: Duration) -> Result<(Data, Duration), ReadError> {
        let mut st = tokio::time::timeout(timeout, self.state.lock()).await.map_err(|_| ReadError::Busy(timeout))?;
        if st.in_flight {
            st.conn = None;
            st.in_flight = false;
        }
        let mut reused = st.conn.is_some();
        loop {
            if st.conn.is_none() {
                let now = Instant::now();
                if let Some(at) = st.retry_at.filter(|at| *at > now) {
                    let last = st.last_error.clone().unwrap_or_else(|| "not connected yet".into());
                    return Err(ReadError::Down { last, retry_in: at - now });
                }
                match tokio::time::timeout(timeout, self.connector.connect()).await {
                    Ok(Ok(conn)) => st.conn = Some(conn),
                    Ok(Err(e)) => return Err(self.failed(&mut st, ReadError::Connect(e.to_string()))),
                    Err(_) => {
                        return Err(self.failed(
                            &mut st,
                            ReadError::Connect(format!("no connection within {}", format_duration(timeout))),
                        ))
                    }
                }
            }
            // Borrow the fields apart: the connection is used while the in-flight flag is set.
            let st = &mut *st;
            let Some(conn) = st.conn.as_mut() else {
                return Err(ReadError::Connect("no connection".into()));
            };
            let started = Instant::now();
            st.in_flight = true;
            let result = match tokio::time::timeout(timeout, conn.read(req)).await {
                Ok(result) => result,
                Err(_) => Err(ReadError::Timeout(timeout)),
            };
            let elapsed = started.elapsed();
            st.in_flight = false;
            return match result {
                Ok(data) => {
                    self.answered(st);
                    Ok((data, elapsed))
                }
                Err(e @ ReadError::Exception(_)) => {
                    self.answered(st);
                    Err(e)
                }
                Err(ReadError::Io(why)) if reused => {
                    debug!(link = %self.name, error = %why, "kept Modbus connection was closed; reconnecting once");
                    st.conn = None;
                    reused = false;
                    continue;
                }
                Err(e) => Err(self.failed(st, e)),
            };
        }
    }

    /// The PLC answered: the link works, backoff starts over.
    fn answered(&self, st: &mut LinkState) {
        if st.failures > 0 {
            info!(link = %self.name, after_failures = st.failures, "Modbus connection restored");
        }
        st.failures = 0;
        st.retry_at = None;
        st.last_error = None;
    }

    fn failed(&self, st: &mut LinkState, e: ReadError) -> ReadError {
        if e.breaks_link() || matches!(e, ReadError::Connect(_)) {
            st.conn = None;
            st.failures = st.failures.saturating_add(1);
            let delay = backoff(st.failures);
            st.retry_at = Some(Instant::now() + delay);
            st.last_error = Some(e.to_string());
            // Logged when the link goes down, not on every retry: a dead PLC polled at 10 Hz must not flood
            // the journal. Recovery is logged in answered().
            if st.failures == 1 {
                warn!(link = %self.name, error = %e, "Modbus connection failed; reconnecting with backoff");
            }
        }
        e
    }
}

/// The wait after the `failures`-th consecutive failure: 100 ms, 200 ms, 400 ms ... at most 5 s.
pub(crate) fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1u32 << shift).min(BACKOFF_CAP)
}

/// Modbus TCP.
#[derive(Debug)]
pub(crate) struct TcpConnector(pub SocketAddr);

#[async_trait]
impl Connector for TcpConnector {
    async fn connect(&self) -> io::Result<Box<dyn Transport>> {
        let stream = tokio::net::TcpStream::connect(self.0).await?;
        // One small request, one small answer: waiting to coalesce writes only adds latency.
        stream.set_nodelay(true)?;
        Ok(Box::new(ModbusTransport(tokio_modbus::client::tcp::attach(stream))))
    }
}

/// Modbus RTU over a serial line (RS-485).
#[derive(Debug)]
pub(crate) struct RtuConnector {
    pub device: PathBuf,
    pub baud: u32,
    pub parity: Parity,
    pub stop_bits: u8,
    pub data_bits: u8,
}

#[async_trait]
impl Connector for RtuConnector {
    async fn connect(&self) -> io::Result<Box<dyn Transport>> {
        use tokio_serial::SerialPortBuilderExt as _;
        let parity = match self.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let stop_bits = if self.stop_bits == 2 { tokio_serial::StopBits::Two } else { tokio_serial::StopBits::One };
        let data_bits = if self.data_bits == 7 { tokio_serial::DataBits::Seven } else { tokio_serial::DataBits::Eight };
        let path = self.device.to_string_lossy().into_owned();
        let port = tokio_serial::new(&path, self.baud)
            .parity(parity)
            .stop_bits(stop_bits)
            .data_bits(data_bits)
            .open_native_async()
            .map_err(|e| io::Error::other(format!("{path}: {e}")))?;
        Ok(Box::new(ModbusTransport(tokio_modbus::client::rtu::attach(port))))
    }
}

/// A tokio-modbus client context, with every answer checked against the request (tokio-modbus only
/// debug-asserts register counts, which would panic a debug build on a PLC that sends too few).
struct ModbusTransport(tokio_modbus::client::Context);

#[async_trait]
impl Transport for ModbusTransport {
    async fn read(&mut self, req: Request) -> Result<Data, ReadError> {
        use tokio_modbus::client::Client as _;
        use tokio_modbus::slave::SlaveContext as _;
        use tokio_modbus::{Request as Req, Response as Resp};

        self.0.set_slave(tokio_modbus::Slave(req.unit));
        let (addr, cnt) = (req.address, req.count);
        let request = match req.kind {
            RegisterKind::Holding => Req::ReadHoldingRegisters(addr, cnt),
            RegisterKind::Input => Req::ReadInputRegisters(addr, cnt),
            RegisterKind::Coils => Req::ReadCoils(addr, cnt),
            RegisterKind::Discrete => Req::ReadDiscreteInputs(addr, cnt),
        };
        let response = match self.0.call(request).await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => return Err(ReadError::Exception(u8::from(code))),
            Err(tokio_modbus::Error::Protocol(e)) => return Err(ReadError::Malformed(e.to_string())),
            Err(tokio_modbus::Error::Transport(e)) => return Err(io_error(e)),
        };
        let want = usize::from(cnt);
        match (req.kind, response) {
            (RegisterKind::Holding, Resp::ReadHoldingRegisters(words))
            | (RegisterKind::Input, Resp::ReadInputRegisters(words)) => {
                if words.len() != want {
                    return Err(ReadError::Malformed(format!("asked for {want} registers, got {}", words.len())));
                }
                Ok(Data::Registers(words))
            }
            (RegisterKind::Coils, Resp::ReadCoils(mut bits))
            | (RegisterKind::Discrete, Resp::ReadDiscreteInputs(mut bits)) => {
                // Bits come in whole bytes: more than asked is padding, fewer is wrong.
                if bits.len() < want {
                    return Err(ReadError::Malformed(format!("asked for {want} bits, got {}", bits.len())));
                }
                bits.truncate(want);
                Ok(Data::Bits(bits))
            }
            (_, other) => Err(ReadError::Malformed(format!("answer does not match the request: {other:?}"))),
        }
    }
}

fn io_error(e: io::Error) -> ReadError {
    match e.kind() {
        io::ErrorKind::InvalidData => ReadError::Malformed(e.to_string()),
        // tokio-modbus reports a connection closed by the peer as the last OS error, which says nothing useful.
        _ if e.raw_os_error() == Some(0) => ReadError::Io("closed by the PLC".into()),
        _ => ReadError::Io(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(7), Duration::from_secs(5));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(ReadError::Exception(2).to_string(), "Modbus exception 0x02 (illegal data address)");
        assert_eq!(ReadError::Timeout(Duration::from_millis(200)).to_string(), "no response within 200ms");
        assert_eq!(
            ReadError::Down { last: "no response within 200ms".into(), retry_in: Duration::from_millis(400) }
                .to_string(),
            "not connected (no response within 200ms), reconnecting in 400.0ms"
        );
    }
}
