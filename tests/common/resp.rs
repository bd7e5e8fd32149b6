//! A tiny synchronous RESP2 client over TCP (or TLS over it) for the durability tests:
//! pipelining (send many, then read as many replies), nothing else. Every read has a timeout,
//! so a stuck proxy fails the test instead of hanging it. After `HELLO 3` it reads RESP3 too:
//! pushes as [`Value::Push`], maps and sets as flat arrays, a null as a null bulk.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
    /// A RESP3 push (`>`): invalidations, pub/sub messages.
    Push(Vec<Value>),
}

impl Value {
    /// The reply as text, for comparisons and messages (`nil` for a null).
    pub fn text(&self) -> String {
        match self {
            Value::Simple(s) | Value::Error(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Value::Bulk(None) | Value::Array(None) => "nil".into(),
            Value::Array(Some(items)) => format!("{:?}", items.iter().map(Value::text).collect::<Vec<_>>()),
            Value::Push(items) => format!("push {:?}", items.iter().map(Value::text).collect::<Vec<_>>()),
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }
}

/// A connection's byte stream: TCP, or TLS over TCP.
trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

/// One connection; replies are read in the order their commands were sent.
pub struct Conn {
    /// Writes go to the stream under the buffer (`get_mut`), which leaves buffered replies be.
    reader: BufReader<Box<dyn Duplex>>,
    out: Vec<u8>,
}

impl Conn {
    /// Connects with `timeout` for the connect and for every read.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        Ok(Conn { reader: BufReader::new(Box::new(tcp(addr, timeout)?)), out: Vec::new() })
    }

    /// A connection over `stream` (e.g. TLS over [`tcp`]).
    pub fn over(stream: impl Read + Write + Send + 'static) -> Conn {
        Conn { reader: BufReader::new(Box::new(stream)), out: Vec::new() }
    }

    /// Queues a command; nothing is sent until [`Conn::flush`] (or a method that reads).
    pub fn queue<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        self.out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            let arg = arg.as_ref();
            self.out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            self.out.extend_from_slice(arg);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.reader.get_mut().write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Sends one command and reads its reply.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<Value> {
        self.queue(args);
        self.flush()?;
        self.read()
    }

    /// Reads `n` replies of commands sent earlier.
    pub fn read_n(&mut self, n: usize) -> io::Result<Vec<Value>> {
        (0..n).map(|_| self.read()).collect()
    }

    /// Reads the next reply.
    pub fn read(&mut self) -> io::Result<Value> {
        let line = self.line()?;
        let (kind, rest) = line.split_first().ok_or_else(|| bad("empty line"))?;
        let text = String::from_utf8_lossy(rest).into_owned();
        let number = || text.parse::<i64>().map_err(|_| bad("bad number"));
        Ok(match kind {
            b'+' => Value::Simple(text),
            b'-' => Value::Error(text),
            b':' => Value::Int(number()?),
            b'$' => match usize::try_from(number()?) {
                Err(_) => Value::Bulk(None),
                Ok(len) => {
                    let mut data = vec![0; len + 2];
                    self.reader.read_exact(&mut data)?;
                    data.truncate(len);
                    Value::Bulk(Some(data))
                }
            },
            b'*' | b'~' => match usize::try_from(number()?) {
                Err(_) => Value::Array(None),
                Ok(len) => Value::Array(Some(self.read_items(len)?)),
            },
            b'%' => Value::Array(Some(self.read_items(2 * usize::try_from(number()?).map_err(|_| bad("bad map"))?)?)),
            b'>' => Value::Push(self.read_items(usize::try_from(number()?).map_err(|_| bad("bad push"))?)?),
            b'_' => Value::Bulk(None),
            // A verbatim string (`=len`, then `txt:` and the text): the text, as RESP2 sends it.
            b'=' => {
                let len = usize::try_from(number()?).map_err(|_| bad("bad verbatim string"))?;
                let mut data = vec![0; len + 2];
                self.reader.read_exact(&mut data)?;
                data.truncate(len);
                Value::Bulk(Some(data.split_off(4.min(len))))
            }
            _ => return Err(bad("unknown reply type")),
        })
    }

    fn read_items(&mut self, len: usize) -> io::Result<Vec<Value>> {
        (0..len).map(|_| self.read()).collect()
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\r\n") {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-reply"));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }
}

/// A TCP connection with `timeout` for the connect and for every read and write.
pub fn tcp(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}
