//! A minimal RESP2 codec for the test admin channel.
//!
//! [`TestServer::cmd`](crate::TestServer::cmd) talks to servers directly over
//! a plain [`std::net::TcpStream`] rather than through the client library
//! under test, so that test setup and assertions do not depend on the code
//! being tested. This module provides the two halves of that conversation:
//!
//! * [`encode_command`] turns `["SET", "k", "v"]` into a RESP2 array of bulk
//!   strings;
//! * [`read_resp`] reads exactly one (possibly nested) RESP2 reply into a
//!   [`Resp`] value.
//!
//! RESP3 is deliberately not supported: the admin channel never sends `HELLO 3`.

use std::io::BufRead;

/// Maximum nesting depth accepted by [`read_resp`] (guards against stack overflow).
const MAX_DEPTH: usize = 64;
/// Maximum bulk string length accepted by [`read_resp`] (the Redis default `proto-max-bulk-len`).
const MAX_BULK: i64 = 512 * 1024 * 1024;
/// Maximum element count accepted for one array by [`read_resp`].
const MAX_ARRAY: i64 = 16 * 1024 * 1024;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK` style simple string.
    Simple(String),
    /// `-ERR ...` error reply (the text after the `-`).
    Error(String),
    /// `:42` integer reply.
    Integer(i64),
    /// `$n` bulk string; `None` is the nil bulk string `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*n` array; `None` is the nil array `*-1`.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The text of a [`Resp::Simple`] or a UTF-8 [`Resp::Bulk`]; `None` otherwise
    /// (including nil bulk strings and non-UTF-8 bulk strings).
    pub fn as_str(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => String::from_utf8(b.clone()).ok(),
            _ => None,
        }
    }

    /// The value of a [`Resp::Integer`]; `None` otherwise.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Resp::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements of a non-nil [`Resp::Array`]; `None` otherwise.
    pub fn as_array(&self) -> Option<&[Resp]> {
        match self {
            Resp::Array(Some(items)) => Some(items),
            _ => None,
        }
    }

    /// `true` for the nil bulk string and the nil array.
    pub fn is_nil(&self) -> bool {
        matches!(self, Resp::Bulk(None) | Resp::Array(None))
    }
}

/// Encodes a command as a RESP2 array of bulk strings.
///
/// ```
/// use forze_redis_testkit::resp::encode_command;
/// assert_eq!(encode_command(&["GET", "k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
/// ```
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads exactly one RESP2 reply (arrays are read recursively).
///
/// Errors are descriptive strings: I/O failures, an unexpected end of
/// stream, or malformed input.
pub fn read_resp<R: BufRead>(reader: &mut R) -> Result<Resp, String> {
    read_value(reader, 0)
}

fn read_value<R: BufRead>(reader: &mut R, depth: usize) -> Result<Resp, String> {
    if depth > MAX_DEPTH {
        return Err(format!("RESP nesting deeper than {MAX_DEPTH}"));
    }
    let line = read_line(reader)?;
    let (tag, rest) = match line.split_first() {
        Some((tag, rest)) => (*tag, rest),
        None => return Err("empty RESP line".to_string()),
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    match tag {
        b'+' => Ok(Resp::Simple(text())),
        b'-' => Ok(Resp::Error(text())),
        b':' => parse_int(rest).map(Resp::Integer),
        b'$' => {
            let len = parse_int(rest)?;
            if len < 0 {
                return Ok(Resp::Bulk(None));
            }
            if len > MAX_BULK {
                return Err(format!("RESP bulk string too long: {len}"));
            }
            let mut buf = vec![0u8; len as usize + 2];
            reader
                .read_exact(&mut buf)
                .map_err(|e| format!("reading RESP bulk string of {len} bytes: {e}"))?;
            if !buf.ends_with(b"\r\n") {
                return Err("RESP bulk string not terminated by CRLF".to_string());
            }
            buf.truncate(len as usize);
            Ok(Resp::Bulk(Some(buf)))
        }
        b'*' => {
            let len = parse_int(rest)?;
            if len < 0 {
                return Ok(Resp::Array(None));
            }
            if len > MAX_ARRAY {
                return Err(format!("RESP array too long: {len}"));
            }
            let mut items = Vec::with_capacity(len.min(1024) as usize);
            for _ in 0..len {
                items.push(read_value(reader, depth + 1)?);
            }
            Ok(Resp::Array(Some(items)))
        }
        other => Err(format!(
            "unexpected RESP type byte {:?} in line {:?}",
            other as char,
            String::from_utf8_lossy(&line)
        )),
    }
}

/// Reads one CRLF-terminated line and returns it without the CRLF.
fn read_line<R: BufRead>(reader: &mut R) -> Result<Vec<u8>, String> {
    let mut line = Vec::new();
    let n = reader
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("reading RESP line: {e}"))?;
    if n == 0 {
        return Err("connection closed before a complete RESP reply".to_string());
    }
    if !line.ends_with(b"\r\n") {
        return Err(format!(
            "truncated RESP line {:?}",
            String::from_utf8_lossy(&line)
        ));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_int(bytes: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| format!("invalid RESP integer {:?}", String::from_utf8_lossy(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn parse(input: &[u8]) -> Result<Resp, String> {
        read_resp(&mut Cursor::new(input))
    }

    #[test]
    fn encodes_commands() {
        assert_eq!(encode_command::<&str>(&[]), b"*0\r\n");
        assert_eq!(
            encode_command(&["SET", "key", ""]),
            b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$0\r\n\r\n"
        );
        assert_eq!(
            encode_command(&[b"a\r\nb".as_slice()]),
            b"*1\r\n$4\r\na\r\nb\r\n"
        );
    }

    #[test]
    fn parses_scalars() {
        assert_eq!(parse(b"+PONG\r\n"), Ok(Resp::Simple("PONG".into())));
        assert_eq!(
            parse(b"-ERR unknown command\r\n"),
            Ok(Resp::Error("ERR unknown command".into()))
        );
        assert_eq!(parse(b":-42\r\n"), Ok(Resp::Integer(-42)));
        assert_eq!(
            parse(b"$5\r\nhello\r\n"),
            Ok(Resp::Bulk(Some(b"hello".to_vec())))
        );
        assert_eq!(parse(b"$0\r\n\r\n"), Ok(Resp::Bulk(Some(Vec::new()))));
        assert_eq!(parse(b"$-1\r\n"), Ok(Resp::Bulk(None)));
        assert_eq!(parse(b"*-1\r\n"), Ok(Resp::Array(None)));
        assert_eq!(parse(b"*0\r\n"), Ok(Resp::Array(Some(vec![]))));
    }

    #[test]
    fn bulk_may_contain_crlf() {
        assert_eq!(
            parse(b"$4\r\na\r\nb\r\n"),
            Ok(Resp::Bulk(Some(b"a\r\nb".to_vec())))
        );
    }

    #[test]
    fn parses_nested_arrays() {
        let input = b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n*1\r\n-ERR x\r\n";
        let expected = Resp::Array(Some(vec![
            Resp::Integer(1),
            Resp::Array(Some(vec![
                Resp::Bulk(Some(b"a".to_vec())),
                Resp::Bulk(None),
            ])),
            Resp::Array(Some(vec![Resp::Error("ERR x".into())])),
        ]));
        assert_eq!(parse(input), Ok(expected));
    }

    #[test]
    fn reads_exactly_one_reply() {
        let mut cur = Cursor::new(b"+A\r\n:2\r\n".as_slice());
        assert_eq!(read_resp(&mut cur), Ok(Resp::Simple("A".into())));
        assert_eq!(read_resp(&mut cur), Ok(Resp::Integer(2)));
        assert!(read_resp(&mut cur).is_err());
    }

    #[test]
    fn rejects_malformed_input() {
        assert!(parse(b"").is_err());
        assert!(parse(b"+PONG").is_err());
        assert!(parse(b"?what\r\n").is_err());
        assert!(parse(b":abc\r\n").is_err());
        assert!(parse(b"$5\r\nhel\r\n").is_err());
        assert!(parse(b"$3\r\nhelXY").is_err());
        assert!(parse(b"*2\r\n:1\r\n").is_err());
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(Resp::Simple("OK".into()).as_str().as_deref(), Some("OK"));
        assert_eq!(
            Resp::Bulk(Some(b"v".to_vec())).as_str().as_deref(),
            Some("v")
        );
        assert_eq!(Resp::Bulk(None).as_str(), None);
        assert_eq!(Resp::Bulk(Some(vec![0xff])).as_str(), None);
        assert_eq!(Resp::Integer(3).as_int(), Some(3));
        assert_eq!(Resp::Simple("3".into()).as_int(), None);
        assert_eq!(
            Resp::Array(Some(vec![Resp::Integer(1)])).as_array(),
            Some([Resp::Integer(1)].as_slice())
        );
        assert_eq!(Resp::Array(None).as_array(), None);
        assert!(Resp::Bulk(None).is_nil());
        assert!(Resp::Array(None).is_nil());
        assert!(!Resp::Bulk(Some(vec![])).is_nil());
    }
}
