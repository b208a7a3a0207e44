//! A misbehaving connection is answered with an error and closed; the server keeps serving others.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use chorus_bootstrap::protocol::{self, Request, Response, MAGIC, VERSION};
use chorus_bootstrap::{Store, StoreClient, StoreServer};

fn raw(s: &StoreServer) -> TcpStream {
    let t = TcpStream::connect(s.local_addr()).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t
}

/// Reads whatever the server sends until it closes the connection.
fn read_until_closed(t: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = t.read_to_end(&mut buf);
    buf
}

fn assert_error_then_closed(t: &mut TcpStream) {
    let bytes = read_until_closed(t);
    match protocol::read_msg::<Response>(&mut &bytes[..]) {
        Ok(Response::Error(msg)) => assert!(msg.contains("malformed"), "{msg}"),
        other => panic!("expected an error response, got {other:?}"),
    }
}

fn still_serving(s: &StoreServer, tag: &str) {
    let c = StoreClient::connect(&s.local_addr().to_string(), Duration::from_secs(10)).unwrap();
    c.set(tag, b"ok").unwrap();
    assert_eq!(c.get(tag).unwrap(), Some(b"ok".to_vec()));
}

#[test]
fn garbage_bytes() {
    let s = StoreServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let survivor =
        StoreClient::connect(&s.local_addr().to_string(), Duration::from_secs(10)).unwrap();
    let mut t = raw(&s);
    t.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_error_then_closed(&mut t);
    still_serving(&s, "after-garbage");
    // A connection opened before the bad one is unaffected too.
    survivor.set("old", b"1").unwrap();
}

#[test]
fn wrong_version() {
    let s = StoreServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut t = raw(&s);
    let mut frame = MAGIC.to_vec();
    frame.push(VERSION + 1);
    frame.extend_from_slice(&0u32.to_le_bytes());
    t.write_all(&frame).unwrap();
    assert_error_then_closed(&mut t);
    still_serving(&s, "after-version");
}

#[test]
fn oversized_length() {
    let s = StoreServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut t = raw(&s);
    let mut frame = MAGIC.to_vec();
    frame.push(VERSION);
    frame.extend_from_slice(&u32::MAX.to_le_bytes());
    t.write_all(&frame).unwrap();
    assert_error_then_closed(&mut t);
    still_serving(&s, "after-huge");
}

#[test]
fn undecodable_body() {
    let s = StoreServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut t = raw(&s);
    protocol::write_frame(&mut t, &[0xee; 16]).unwrap();
    assert_error_then_closed(&mut t);
    still_serving(&s, "after-undecodable");
}

#[test]
fn truncated_frame_then_close() {
    let s = StoreServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let body = protocol::encode(&Request::Set {
        key: "half".into(),
        value: vec![1; 100],
    });
    let mut frame = Vec::new();
    protocol::write_frame(&mut frame, &body).unwrap();
    for cut in [3, 7, frame.len() / 2] {
        let mut t = raw(&s);
        t.write_all(&frame[..cut]).unwrap();
        t.shutdown(Shutdown::Write).unwrap();
        let _ = read_until_closed(&mut t);
    }
    still_serving(&s, "after-truncated");
    let c = StoreClient::connect(&s.local_addr().to_string(), Duration::from_secs(10)).unwrap();
    assert_eq!(
        c.get("half").unwrap(),
        None,
        "a half frame must not be applied"
    );
}

#[test]
fn valid_raw_request_works() {
    let s = StoreServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut t = raw(&s);
    protocol::write_msg(
        &mut t,
        &Request::Hello {
            client_nonce: vec![7; 32],
        },
    )
    .unwrap();
    assert!(matches!(
        protocol::read_msg::<Response>(&mut t).unwrap(),
        Response::Challenge {
            auth_required: false,
            ..
        }
    ));
    protocol::write_msg(
        &mut t,
        &Request::Add {
            key: "n".into(),
            delta: 4,
        },
    )
    .unwrap();
    assert_eq!(
        protocol::read_msg::<Response>(&mut t).unwrap(),
        Response::Int(4)
    );
    protocol::write_msg(
        &mut t,
        &Request::Wait {
            keys: vec!["nope".into()],
            timeout_ms: 30,
        },
    )
    .unwrap();
    assert_eq!(
        protocol::read_msg::<Response>(&mut t).unwrap(),
        Response::WaitTimeout {
            missing: vec!["nope".into()]
        }
    );
}

#[test]
fn request_before_the_handshake_is_refused() {
    let s = StoreServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut t = raw(&s);
    protocol::write_msg(&mut t, &Request::Get { key: "k".into() }).unwrap();
    assert_error_then_closed(&mut t);
    still_serving(&s, "after-no-handshake");
}
