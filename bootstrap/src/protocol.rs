//! Store wire protocol.
//!
//! Every frame is `b"CHST"` + version `u8` (= [`VERSION`]) + body length `u32` LE + body, where the body is
//! a bincode-2 (serde, standard config) encoded [`Request`] or [`Response`]. Bodies are capped at
//! [`MAX_BODY`] (the server may cap lower) so a corrupt or hostile length can never make the server
//! allocate unbounded memory.
//!
//! A connection starts with a handshake: the client sends [`Request::Hello`] with a fresh nonce, the
//! server answers [`Response::Challenge`]; only then are other requests served. The handshake is
//! where a job secret is proven (`auth` module); it also lets a client tell within its connect
//! deadline that a chorus store, and not some other listener, answers.

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// First bytes of every frame.
pub const MAGIC: [u8; 4] = *b"CHST";
/// 2: the connection handshake ([`Request::Hello`]).
pub const VERSION: u8 = 2;
/// Largest accepted frame body (64 MiB).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Length of the handshake nonces.
pub const NONCE_LEN: usize = 32;
/// Magic, version and body length.
pub const HEADER_LEN: usize = 9;

/// A client's request; the server answers each with one [`Response`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The first request on every connection.
    Hello {
        /// The client's fresh nonce ([`NONCE_LEN`] bytes).
        client_nonce: Vec<u8>,
    },
    /// The client's proof of the job secret, after a [`Response::Challenge`] that asked for one.
    Prove {
        /// The client's proof over both nonces ([`JobSecret::prove`](crate::JobSecret::prove)).
        client_mac: Vec<u8>,
    },
    /// Sets `key` to `value`; answered with [`Response::Ok`].
    Set {
        /// Key to set.
        key: String,
        /// Its new value.
        value: Vec<u8>,
    },
    /// Reads `key`; answered with [`Response::Value`].
    Get {
        /// Key to read.
        key: String,
    },
    /// The server waits at most `timeout_ms` and then answers [`Response::WaitTimeout`].
    Wait {
        /// Keys that must all exist; the answer is [`Response::Values`] in this order.
        keys: Vec<String>,
        /// How long to wait, in milliseconds.
        timeout_ms: u64,
    },
    /// Adds `delta` to the counter at `key`; answered with [`Response::Int`], the new value.
    Add {
        /// Counter key (decimal i64 text; absent counts as 0).
        key: String,
        /// Amount to add.
        delta: i64,
    },
    /// Sets `key` to `new` if it holds `expected`; answered with [`Response::Swapped`].
    CompareSet {
        /// Key to swap.
        key: String,
        /// Value the key must hold for the swap (`None`: the key must be absent).
        expected: Option<Vec<u8>>,
        /// Value to store.
        new: Vec<u8>,
    },
    /// Removes `key`; answered with [`Response::Bool`], whether it existed.
    Delete {
        /// Key to remove.
        key: String,
    },
    /// Lists the keys starting with `prefix`; answered with [`Response::Keys`].
    ListPrefix {
        /// Prefix to match.
        prefix: String,
    },
}

/// The server's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to [`Request::Hello`]. Without `auth_required` the connection is ready.
    Challenge {
        /// The server's fresh nonce ([`NONCE_LEN`] bytes).
        server_nonce: Vec<u8>,
        /// Whether the client must send [`Request::Prove`] next.
        auth_required: bool,
    },
    /// The answer to an accepted [`Request::Prove`]: the server's own proof of the secret.
    Welcome {
        /// The server's proof over both nonces ([`JobSecret::prove`](crate::JobSecret::prove)).
        server_mac: Vec<u8>,
    },
    /// Done (answers [`Request::Set`]).
    Ok,
    /// The value read by [`Request::Get`]; `None` if the key is absent.
    Value(Option<Vec<u8>>),
    /// The values awaited by [`Request::Wait`], in the order of its keys.
    Values(Vec<Vec<u8>>),
    /// The counter's new value after [`Request::Add`].
    Int(i64),
    /// The outcome of [`Request::CompareSet`].
    Swapped {
        /// Whether `new` was stored.
        swapped: bool,
        /// The value held after the operation (empty for a failed swap on an absent key).
        value: Vec<u8>,
    },
    /// Whether the key of [`Request::Delete`] existed.
    Bool(bool),
    /// The keys listed by [`Request::ListPrefix`], sorted.
    Keys(Vec<String>),
    /// [`Request::Wait`] timed out before every key existed.
    WaitTimeout {
        /// The keys still absent.
        missing: Vec<String>,
    },
    /// The request failed on the server (bad counter value, malformed frame, ...).
    Error(String),
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection before a frame began.
    #[error("connection closed")]
    Closed,
    /// The frame does not start with [`MAGIC`]; holds the bytes that came instead.
    #[error("bad magic {0:02x?} (expected \"CHST\")")]
    BadMagic([u8; 4]),
    /// The frame is of another protocol version than [`VERSION`]; holds that version.
    #[error("unsupported protocol version {0} (expected {VERSION})")]
    BadVersion(u8),
    /// The announced body exceeds the size limit.
    #[error("frame body of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The announced body length.
        len: u64,
        /// The limit in force.
        limit: usize,
    },
    /// The connection closed in the middle of a frame.
    #[error("connection closed in the middle of a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes of the frame that arrived, header included.
        got: usize,
        /// Bytes the frame needed (the header, or the header and the announced body).
        want: usize,
    },
    /// The body is not a valid message, or has bytes left over after it.
    #[error("undecodable body: {0}")]
    Decode(String),
    /// Reading the socket failed (timeouts included).
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_BODY>,
> {
    bincode::config::standard().with_limit::<MAX_BODY>()
}

/// Encodes a message as a frame body (bincode, standard config); empty, which decodes as an error,
/// if that fails.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Encoding our own plain enums into a Vec cannot fail except by exceeding the limit, which
    // write_frame reports; fall back to an empty body (decodes as an error) rather than panicking.
    bincode::serde::encode_to_vec(msg, config()).unwrap_or_default()
}

/// Decodes a frame body as one message; bytes left over are an error.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes after the message",
            body.len() - used
        )));
    }
    Ok(msg)
}

/// Writes one frame (header + body) with a single `write_all`.
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    if body.len() > MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "message of {} bytes exceeds the {MAX_BODY}-byte store limit",
                body.len()
            ),
        ));
    }
    let mut buf = Vec::with_capacity(HEADER_LEN + body.len());
    buf.extend_from_slice(&MAGIC);
    buf.push(VERSION);
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf)?;
    w.flush()
}

/// Encodes `msg` and writes it as one frame.
pub fn write_msg<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    write_frame(w, &encode(msg))
}

/// Reads until `buf` is full or EOF; returns how many bytes arrived.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Checks the frame header at the start of `buf` (which may hold only part of it) and returns the
/// body length once the whole header is there (`Ok(None)` while it is incomplete). Garbage is
/// reported as soon as the first wrong byte arrives, not only once a whole header did.
pub fn parse_header(buf: &[u8], max_body: usize) -> Result<Option<usize>, FrameError> {
    let magic_got = buf.len().min(MAGIC.len());
    if buf[..magic_got] != MAGIC[..magic_got] {
        let mut m = [0u8; 4];
        m[..magic_got].copy_from_slice(&buf[..magic_got]);
        return Err(FrameError::BadMagic(m));
    }
    if buf.len() > 4 && buf[4] != VERSION {
        return Err(FrameError::BadVersion(buf[4]));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
    if len > max_body.min(MAX_BODY) {
        return Err(FrameError::TooLarge {
            len: len as u64,
            limit: max_body.min(MAX_BODY),
        });
    }
    Ok(Some(len))
}

/// If `buf` starts with a whole frame, the range of its body and the frame's total length.
pub fn split_frame(
    buf: &[u8],
    max_body: usize,
) -> Result<Option<(std::ops::Range<usize>, usize)>, FrameError> {
    match parse_header(buf, max_body)? {
        Some(len) if buf.len() >= HEADER_LEN + len => {
            Ok(Some((HEADER_LEN..HEADER_LEN + len, HEADER_LEN + len)))
        }
        _ => Ok(None),
    }
}

/// Reads one frame body. A clean EOF before the first header byte is [`FrameError::Closed`].
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Err(FrameError::Closed);
    }
    let Some(len) = parse_header(&header[..got], MAX_BODY)? else {
        return Err(FrameError::Truncated {
            got,
            want: HEADER_LEN,
        });
    };
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body)?;
    if got < len {
        return Err(FrameError::Truncated {
            got: HEADER_LEN + got,
            want: HEADER_LEN + len,
        });
    }
    Ok(body)
}

/// Reads one frame and decodes its body.
pub fn read_msg<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, FrameError> {
    decode(&read_frame(r)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejects() {
        let req = Request::CompareSet {
            key: "k".into(),
            expected: None,
            new: vec![1, 2, 3],
        };
        let mut buf = Vec::new();
        write_msg(&mut buf, &req).unwrap();
        assert_eq!(read_msg::<Request>(&mut &buf[..]).unwrap(), req);

        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(FrameError::BadMagic(_))
        ));
        let mut bad = buf.clone();
        bad[4] = 9;
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(FrameError::BadVersion(9))
        ));
        let mut bad = buf.clone();
        bad[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            read_frame(&mut &buf[..buf.len() - 1]),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            read_frame(&mut &buf[..3]),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(read_frame(&mut &[][..]), Err(FrameError::Closed)));
        // Valid frame, garbage body.
        let mut junk = Vec::new();
        write_frame(&mut junk, &[0xff; 7]).unwrap();
        assert!(matches!(
            read_msg::<Request>(&mut &junk[..]),
            Err(FrameError::Decode(_))
        ));
    }
}
