//! Authenticated rendezvous (issue 17, item 1): a store with a job secret serves only clients that
//! prove it, refuses the others at once with a clear error, and proves the secret back.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chorus_bootstrap::protocol::{self, Request, Response};
use chorus_bootstrap::server::ServerLimits;
use chorus_bootstrap::{BootstrapError, JobSecret, Store, StoreClient, StoreServer};

/// Long enough that a client which retried instead of failing would make the test time out.
const T: Duration = Duration::from_secs(120);

fn secret(text: &str) -> Option<JobSecret> {
    JobSecret::new(text)
}

fn server(with: Option<JobSecret>) -> StoreServer {
    StoreServer::bind_with("127.0.0.1:0".parse().unwrap(), ServerLimits::default(), with).unwrap()
}

fn auth_error(err: BootstrapError) -> String {
    match err {
        BootstrapError::Auth { .. } => err.to_string(),
        other => panic!("expected an authentication error, got {other}"),
    }
}

/// `chorus-store` in a child process with `CHORUS_SECRET` set; killed on drop.
struct SecretStore(Child, SocketAddr);

impl SecretStore {
    fn start(text: &str) -> SecretStore {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chorus-store"))
            .args(["--addr", "127.0.0.1:0"])
            .env("CHORUS_SECRET", text)
            .env_remove("CHORUS_SECRET_FILE")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
        SecretStore(child, addr)
    }
}

impl Drop for SecretStore {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_client_without_the_secret_is_refused_by_a_store_process() {
    let store = SecretStore::start("job-secret-1");
    let addr = store.1.to_string();
    let msg = auth_error(StoreClient::connect_with(&addr, T, None).unwrap_err());
    assert!(msg.contains("requires the job secret") && msg.contains(&addr), "{msg}");
    let msg = auth_error(StoreClient::connect_with(&addr, T, secret("guess")).unwrap_err());
    assert!(msg.contains("authentication failed") || msg.contains("secret"), "{msg}");
    let c = StoreClient::connect_with(&addr, T, secret("job-secret-1")).unwrap();
    c.set("k", b"v").unwrap();
    assert_eq!(c.get("k").unwrap(), Some(b"v".to_vec()));
}

#[test]
fn a_wrong_secret_is_refused_and_counted() {
    let s = server(secret("right"));
    let addr = s.local_addr().to_string();
    let msg = auth_error(StoreClient::connect_with(&addr, T, secret("wrong")).unwrap_err());
    assert!(msg.contains("proof does not match") || msg.contains("closed the connection after our proof"), "{msg}");
    assert_eq!(s.stats().refused_auth, 1);
    let c = StoreClient::connect_with(&addr, T, secret("right")).unwrap();
    c.add("n", 1).unwrap();
    assert_eq!(s.stats().refused_auth, 1);
}

#[test]
fn a_client_with_a_secret_refuses_a_store_without_one() {
    let s = server(None);
    let msg = auth_error(
        StoreClient::connect_with(&s.local_addr().to_string(), T, secret("mine")).unwrap_err(),
    );
    assert!(msg.contains("does not ask for it"), "{msg}");
}

#[test]
fn requests_before_the_proof_are_refused() {
    let s = server(secret("right"));
    let mut t = TcpStream::connect(s.local_addr()).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    protocol::write_msg(&mut t, &Request::Hello { client_nonce: vec![3; 32] }).unwrap();
    match protocol::read_msg::<Response>(&mut t).unwrap() {
        Response::Challenge { auth_required: true, server_nonce } => assert_eq!(server_nonce.len(), 32),
        other => panic!("expected a challenge, got {other:?}"),
    }
    protocol::write_msg(&mut t, &Request::Get { key: "k".into() }).unwrap();
    let mut bytes = Vec::new();
    let _ = t.read_to_end(&mut bytes);
    match protocol::read_msg::<Response>(&mut &bytes[..]) {
        Ok(Response::Error(msg)) => assert!(msg.contains("authentication required"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(s.stats().refused_auth, 1);
}

#[test]
fn clients_with_the_secret_are_served_on_every_pooled_connection() {
    let s = server(secret("right"));
    let addr = s.local_addr().to_string();
    let c = std::sync::Arc::new(StoreClient::connect_with(&addr, T, secret("right")).unwrap());
    // A wait on one thread while another sets: the second request opens a second connection,
    // which must authenticate too.
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || c.wait(&["late"], Duration::from_secs(20)))
    };
    let other = StoreClient::connect_with(&addr, T, secret("right")).unwrap();
    c.set("early", b"1").unwrap();
    other.set("late", b"2").unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), vec![b"2".to_vec()]);
    assert_eq!(s.stats().refused_auth, 0);
}
