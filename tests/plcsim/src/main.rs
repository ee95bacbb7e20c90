//! `otpatch-plcsim`: a scriptable Modbus TCP PLC for otpatch's tests, demo and benchmarks.
//!
//! It serves the four Modbus tables (every address 0..65535 exists and reads 0 until set) and takes line
//! commands from a script file, `-e`, stdin and an optional control port, so a test can change the plant while
//! a probe watches it. See `--help` for the commands.

mod sim;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response};

use sim::{Answer, Plc, Table};

const COMMANDS: &str = "\
COMMANDS (script file, -e, stdin, control port; one per line, `#` starts a comment; each gets one reply line:
`ok`, a value, or `err <why>`)
  set TABLE ADDR TYPE VALUE [little]   set a register value (32-bit types: high word first unless `little`)
  set coil|discrete ADDR 0|1           set a bit
  get TABLE ADDR [TYPE [little]]       print a value (default type u16)
  drift TABLE ADDR TYPE STEP MS [little]  add STEP every MS milliseconds
  drift TABLE ADDR off
  heartbeat TABLE ADDR MS              add 1 (a bit: toggle) every MS milliseconds
  heartbeat TABLE ADDR off             the heartbeat stops
  exception TABLE ADDR CODE            reads touching ADDR answer Modbus exception CODE (e.g. 2, 4, 0x0B)
  exception TABLE ADDR off
  silence on|off                       take requests and never answer them
  delay MS                             answer every request MS milliseconds late (0: at once)
  stats                                print `requests N`
TABLE is holding|input|coil|discrete (or h|i|c|d); TYPE is u16|i16|u32|i32|f32.

EXAMPLE
  otpatch-plcsim --listen 127.0.0.1:5020 -e 'set h 0 u16 50' -e 'heartbeat h 1 500'
  echo 'set h 0 u16 95' | nc 127.0.0.1 5021    (with --control 127.0.0.1:5021)";

/// A scriptable Modbus TCP PLC simulator (for tests; never expose it on a plant network).
#[derive(Debug, Parser)]
#[command(name = "otpatch-plcsim", version, after_help = COMMANDS)]
struct Args {
    /// Modbus TCP address to serve on. Port 0 picks a free port; the address is printed as
    /// `listening ADDR` on stdout.
    #[arg(long, default_value = "127.0.0.1:5020")]
    listen: SocketAddr,
    /// A file of commands run at start.
    #[arg(long)]
    script: Option<PathBuf>,
    /// A command run at start (after the script); may be repeated.
    #[arg(short = 'e', long = "exec", value_name = "COMMAND")]
    exec: Vec<String>,
    /// Also take commands on this TCP address (a line protocol; one reply line per command), printed as
    /// `control ADDR` on stdout.
    #[arg(long)]
    control: Option<SocketAddr>,
    /// Exit when stdin closes (tests: the simulator goes when the test goes). Otherwise stdin EOF just ends
    /// the stdin commands.
    #[arg(long)]
    exit_on_eof: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("otpatch-plcsim: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> io::Result<()> {
    let plc = Plc::new();
    let mut startup = Vec::new();
    if let Some(path) = &args.script {
        let text =
            std::fs::read_to_string(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        startup.extend(text.lines().enumerate().map(|(i, l)| (format!("{}:{}", path.display(), i + 1), l.to_string())));
    }
    startup.extend(args.exec.iter().map(|c| ("-e".to_string(), c.clone())));
    for (place, line) in startup {
        let reply = plc.command(&line);
        if reply.0.starts_with("err") {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{place}: {line:?}: {reply}")));
        }
    }

    let listener = TcpListener::bind(args.listen).await?;
    let control = match args.control {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let mut out = tokio::io::stdout();
    out.write_all(format!("listening {}\n", listener.local_addr()?).as_bytes()).await?;
    if let Some(control) = &control {
        out.write_all(format!("control {}\n", control.local_addr()?).as_bytes()).await?;
    }
    out.flush().await?;

    if let Some(control) = control {
        tokio::spawn(serve_control(control, plc.clone()));
    }
    let stdin_done = tokio::spawn(serve_stdin(plc.clone()));
    let server = Server::new(listener);
    let new_service = {
        let plc = plc.clone();
        move |_addr: SocketAddr| Ok(Some(PlcService(plc.clone())))
    };
    let on_connected = |stream, addr| {
        let new_service = new_service.clone();
        async move { accept_tcp_connection(stream, addr, new_service) }
    };
    // A client that sends garbage loses its connection; the simulator goes on.
    let on_error = |_e: io::Error| {};
    let serving = server.serve(&on_connected, on_error);
    if args.exit_on_eof {
        tokio::select! {
            r = serving => r,
            _ = stdin_done => Ok(()),
        }
    } else {
        serving.await
    }
}

/// Commands on stdin, replies on stdout; returns at EOF.
async fn serve_stdin(plc: Arc<Plc>) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = plc.command(&line);
        if out.write_all(format!("{reply}\n").as_bytes()).await.is_err() || out.flush().await.is_err() {
            return;
        }
    }
}

/// The control port: each connection sends command lines and gets one reply line each.
async fn serve_control(listener: TcpListener, plc: Arc<Plc>) {
    while let Ok((stream, _)) = listener.accept().await {
        let plc = plc.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = plc.command(&line);
                if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

struct PlcService(Arc<Plc>);

impl tokio_modbus::server::Service for PlcService {
    type Request = Request<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        let plc = self.0.clone();
        Box::pin(async move {
            let mut silenced = plc.silenced();
            if *silenced.borrow_and_update() {
                // Accepted and never answered while silent; if silence ends, this request still gets no
                // answer (like a PLC that dropped it).
                let _ = silenced.wait_for(|s| !*s).await;
                std::future::pending::<()>().await;
            }
            let delay = plc.delay();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer(&plc, req)
        })
    }
}

fn answer(plc: &Plc, req: Request<'static>) -> Result<Option<Response>, ExceptionCode> {
    let read = |table, addr, cnt: u16| -> Result<Answer, ExceptionCode> {
        if cnt == 0 || cnt > if matches!(table, Table::Coil | Table::Discrete) { 2000 } else { 125 } {
            return Err(ExceptionCode::IllegalDataValue);
        }
        match plc.read(table, addr, cnt) {
            Answer::Exception(code) => Err(ExceptionCode::new(code)),
            other => Ok(other),
        }
    };
    let words = |a: Answer| match a {
        Answer::Words(w) => Ok(w),
        _ => Err(ExceptionCode::ServerDeviceFailure),
    };
    let bits = |a: Answer| match a {
        Answer::Bits(b) => Ok(b),
        _ => Err(ExceptionCode::ServerDeviceFailure),
    };
    let written = |e: Option<u8>| match e {
        Some(code) => Err(ExceptionCode::new(code)),
        None => Ok(()),
    };
    let response = match req {
        Request::ReadHoldingRegisters(a, n) => Response::ReadHoldingRegisters(words(read(Table::Holding, a, n)?)?),
        Request::ReadInputRegisters(a, n) => Response::ReadInputRegisters(words(read(Table::Input, a, n)?)?),
        Request::ReadCoils(a, n) => Response::ReadCoils(bits(read(Table::Coil, a, n)?)?),
        Request::ReadDiscreteInputs(a, n) => Response::ReadDiscreteInputs(bits(read(Table::Discrete, a, n)?)?),
        Request::WriteSingleRegister(a, w) => {
            written(plc.write_words(a, &[w]))?;
            Response::WriteSingleRegister(a, w)
        }
        Request::WriteMultipleRegisters(a, ws) => {
            written(plc.write_words(a, &ws))?;
            Response::WriteMultipleRegisters(a, ws.len() as u16)
        }
        Request::WriteSingleCoil(a, b) => {
            written(plc.write_bits(a, &[b]))?;
            Response::WriteSingleCoil(a, b)
        }
        Request::WriteMultipleCoils(a, bs) => {
            written(plc.write_bits(a, &bs))?;
            Response::WriteMultipleCoils(a, bs.len() as u16)
        }
        _ => return Err(ExceptionCode::IllegalFunction),
    };
    Ok(Some(response))
}
