//! The workload of Cube's quick start and tests. Runs as PID 1 in a
//! `FROM scratch` image, so it uses nothing but std.
//!
//! - `/echo [serve [PORT]]`: HTTP on 0.0.0.0:PORT (env PORT, default 7777).
//!   `GET /` answers "$GREETING from $HOSTNAME", `GET /health` answers 200
//!   (503 once /tmp/unhealthy exists, or once $UNHEALTHY_AFTER_MS ms have
//!   passed since the start), `GET /env` lists the environment, `GET /headers` the request headers,
//!   `GET /redirect` a 302 to `/`, `GET /stall` nothing for two minutes,
//!   and `GET /bytes/N` N bytes (at most 1 GiB).
//! - `/echo sleep SECS`: sleeps, then exits 0.
//! - `/echo exit CODE [AFTER_MS]`: waits AFTER_MS ms, then exits with CODE.
//! - `/echo eat MB`: allocates and touches MB MiB, then sleeps.
//! - `/echo spawn N`: starts up to N children (`/echo sleep 600`, one at a
//!   time, stopping at the first refusal), prints `spawned K of N` (and the
//!   refusal), then sleeps; the children die with the container. A pids
//!   limit shows as K below N.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(code: i32) -> !;
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

extern "C" fn on_terminate(_signum: i32) {
    // SAFETY: _exit is async-signal-safe; nothing else happens here.
    unsafe { _exit(0) }
}

fn main() {
    // As PID 1 the default action of SIGTERM is to ignore it; exit instead,
    // so that `docker stop` does not wait for its timeout.
    // SAFETY: installing a handler that only calls _exit.
    unsafe {
        signal(SIGTERM, on_terminate);
        signal(SIGINT, on_terminate);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["serve"] => serve(default_port()),
        ["serve", port] => match port.parse() {
            Ok(port) => serve(port),
            Err(_) => usage(),
        },
        ["sleep", secs] => match secs.parse::<f64>() {
            Ok(secs) if secs >= 0.0 => {
                say(&format!("sleeping {secs} s"));
                std::thread::sleep(Duration::from_secs_f64(secs));
                say("done");
            }
            _ => usage(),
        },
        ["eat", mb] => match mb.parse::<usize>() {
            Ok(mb) => eat(mb),
            Err(_) => usage(),
        },
        ["spawn", n] => match n.parse::<usize>() {
            Ok(n) => spawn(n),
            Err(_) => usage(),
        },
        ["get", addr, path] => get(addr, path),
        ["touch", path] => {
            let path = std::path::Path::new(path);
            let made = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(path, b""));
            if let Err(e) = made {
                eprintln!("touch {}: {e}", path.display());
                std::process::exit(1)
            }
        }
        ["exit", code] => exit_with(code, "0"),
        ["exit", code, after_ms] => exit_with(code, after_ms),
        _ => usage(),
    }
}

/// Whether $UNHEALTHY_AFTER_MS ms have passed since the process started.
fn turned_unhealthy() -> bool {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    std::env::var("UNHEALTHY_AFTER_MS")
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .is_some_and(|ms| start.elapsed() >= Duration::from_millis(ms))
}

/// Allocates and touches `mb` MiB, one at a time, then sleeps: a container
/// with a smaller memory limit is killed for it.
fn eat(mb: usize) {
    let mut held: Vec<Vec<u8>> = Vec::new();
    for i in 1..=mb {
        held.push(vec![1u8; 1024 * 1024]);
        if i % 16 == 0 {
            say(&format!("holding {i} MiB"));
        }
    }
    say(&format!("holding {} MiB in all", held.len()));
    std::thread::sleep(Duration::from_secs(600));
}

/// Starts up to `n` sleeping children of this program, says how many it
/// could, then sleeps (as PID 1: its children die with the container).
fn spawn(n: usize) {
    let program = std::env::current_exe().unwrap_or_else(|_| "/echo".into());
    let mut children = Vec::new();
    let mut refusal = None;
    while children.len() < n {
        let child = std::process::Command::new(&program)
            .args(["sleep", "600"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(child) => children.push(child),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    match refusal {
        Some(e) => say(&format!("spawned {} of {n}: {e}", children.len())),
        None => say(&format!("spawned {} of {n}", children.len())),
    }
    std::thread::sleep(Duration::from_secs(600));
}

fn usage() -> ! {
    eprintln!(
        "usage: echo [serve [PORT]] | sleep SECS | exit CODE [AFTER_MS] | eat MB | spawn N | get HOST:PORT PATH | touch PATH"
    );
    std::process::exit(2)
}

/// One HTTP/1.0 GET of `path` from `addr` (a name is resolved as the
/// container's resolver says): prints the answer, exits 1 on failure.
fn get(addr: &str, path: &str) {
    let fetched = (|| -> std::io::Result<String> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer)?;
        Ok(answer)
    })();
    match fetched {
        Ok(answer) => say(&answer),
        Err(e) => {
            eprintln!("get {addr}{path}: {e}");
            std::process::exit(1)
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn exit_with(code: &str, after_ms: &str) {
    let (Ok(code), Ok(after_ms)) = (code.parse::<i32>(), after_ms.parse::<u64>()) else {
        usage()
    };
    say(&format!("exiting with code {code} after {after_ms} ms"));
    std::thread::sleep(Duration::from_millis(after_ms));
    std::process::exit(code)
}

fn default_port() -> u16 {
    std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(7777)
}

fn serve(port: u16) {
    // Start the clock of $UNHEALTHY_AFTER_MS now.
    let _ = turned_unhealthy();
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on port {port}: {e}");
            std::process::exit(1)
        }
    };
    say(&format!("listening on 0.0.0.0:{port}"));
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            if let Err(e) = answer(stream) {
                eprintln!("connection error: {e}");
            }
        });
    }
}

/// Reads a PROXY protocol v2 header; the client it names (TCP over IPv4),
/// or what it says instead.
fn proxy_source(reader: &mut impl std::io::Read) -> std::io::Result<String> {
    const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
    let mut fixed = [0u8; 16];
    reader.read_exact(&mut fixed)?;
    if fixed[..12] != SIGNATURE || fixed[12] >> 4 != 2 {
        return Err(std::io::Error::other("no PROXY protocol v2 header"));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut rest = vec![0u8; len];
    reader.read_exact(&mut rest)?;
    if fixed[13] != 0x11 || len < 12 {
        return Ok(format!("family {:#x}", fixed[13]));
    }
    let ip = std::net::Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
    let port = u16::from_be_bytes([rest[8], rest[9]]);
    Ok(format!("{ip}:{port}"))
}

fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    // With PROXY_PROTOCOL set, a PROXY protocol v2 header comes first;
    // `GET /headers` shows whom it names.
    let proxied = if std::env::var_os("PROXY_PROTOCOL").is_some() {
        Some(proxy_source(&mut reader)?)
    } else {
        None
    };
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read the headers (`GET /headers` sends them back).
    let mut headers = proxied
        .map(|source| format!("proxy-source: {source}\n"))
        .unwrap_or_default();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        headers.push_str(line.trim_end());
        headers.push('\n');
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    if method == "GET" {
        if let Some(n) = path.strip_prefix("/bytes/").and_then(|n| n.parse().ok()) {
            return send_bytes(stream, n);
        }
    }
    let mut extra = "";
    let (status, body) = match (method, path) {
        ("GET", "/") => {
            let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into());
            ("200 OK", format!("{greeting} from {host}\n"))
        }
        ("GET", "/health") => {
            if std::path::Path::new("/tmp/unhealthy").exists() || turned_unhealthy() {
                ("503 Service Unavailable", "unhealthy\n".to_string())
            } else {
                ("200 OK", "ok\n".to_string())
            }
        }
        ("GET", "/headers") => ("200 OK", headers),
        ("GET", "/redirect") => {
            extra = "Location: /\r\n";
            ("302 Found", "see /\n".to_string())
        }
        ("GET", "/stall") => {
            // Sends nothing for two minutes (a replica that hangs).
            std::thread::sleep(Duration::from_secs(120));
            ("200 OK", "late\n".to_string())
        }
        ("GET", "/env") => {
            let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            vars.sort();
            ("200 OK", vars.join("\n") + "\n")
        }
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    say(&format!("{method} {path} {}", &status[..3]));
    write!(
        stream,
        "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// Answers with `n` bytes (at most 1 GiB), written as the client takes them.
fn send_bytes(mut stream: TcpStream, n: usize) -> std::io::Result<()> {
    let n = n.min(1 << 30);
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
    )?;
    let chunk = [b'x'; 64 << 10];
    let mut left = n;
    while left > 0 {
        let part = left.min(chunk.len());
        stream.write_all(&chunk[..part])?;
        left -= part;
    }
    say(&format!("GET /bytes/{n} 200"));
    stream.flush()
}
