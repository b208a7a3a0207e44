//! The job secret and the challenge-response that proves it (issue 17, item 1).
//!
//! Every store connection and every rank-to-rank introduction may be asked to prove that it knows
//! the job's secret: each side sends a fresh random nonce and answers with HMAC-SHA256 over both
//! nonces under the secret, with a label per role so one side's answer can never be replayed as the
//! other's. The secret itself never travels.
//!
//! Where the secret comes from: `CHORUS_SECRET` (the secret itself), or `CHORUS_SECRET_FILE` (a
//! file holding it; surrounding whitespace ignored). `chorus-run` makes one per job and hands it to
//! its ranks in `CHORUS_SECRET`. Without a secret nothing is authenticated (as on a trusted
//! network); `CHORUS_REQUIRE_SECRET=1` makes listening beyond loopback without one an error.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{BootstrapError, Result};

/// Variable holding the job secret itself.
pub const SECRET_VAR: &str = "CHORUS_SECRET";
/// Variable naming a file that holds the job secret (read when `CHORUS_SECRET` is unset).
pub const SECRET_FILE_VAR: &str = "CHORUS_SECRET_FILE";
/// Variable that, set to `1`/`true`/`yes`, makes listening beyond loopback without a secret an
/// error.
pub const REQUIRE_SECRET_VAR: &str = "CHORUS_REQUIRE_SECRET";
/// Length of a MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;

/// Roles of a proof; part of what is signed, so a proof made for one is worthless for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A store client, proving the secret to the store.
    StoreClient,
    /// The store server, answering with its own proof.
    StoreServer,
    /// The rank that connects in a rank-to-rank introduction.
    LinkConnector,
    /// The rank that accepts it.
    LinkAcceptor,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::StoreClient => b"chorus store client v1",
            Role::StoreServer => b"chorus store server v1",
            Role::LinkConnector => b"chorus link connector v1",
            Role::LinkAcceptor => b"chorus link acceptor v1",
        }
    }
}

/// A job's shared secret. Its `Debug` shows no byte of it.
#[derive(Clone, PartialEq, Eq)]
pub struct JobSecret(Vec<u8>);

impl std::fmt::Debug for JobSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobSecret(..)")
    }
}

impl JobSecret {
    /// A secret from its text; empty (after trimming) is no secret.
    pub fn new(text: &str) -> Option<JobSecret> {
        let t = text.trim();
        (!t.is_empty()).then(|| JobSecret(t.as_bytes().to_vec()))
    }

    /// A fresh secret: 32 random bytes, as 64 hex digits (so it can travel in an environment
    /// variable or a file).
    pub fn generate() -> Result<JobSecret> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| BootstrapError::Random {
            purpose: "a job secret",
            detail: e.to_string(),
        })?;
        Ok(JobSecret(hex(&raw).into_bytes()))
    }

    /// The text to put in `CHORUS_SECRET`.
    pub fn expose(&self) -> &str {
        // Built from a &str or from hex digits only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The proof of `role` over the two nonces (`mine` first: the prover's own nonce is signed
    /// along with the challenge, so neither side alone chooses what is signed).
    pub fn prove(&self, role: Role, context: &[u8], challenge: &[u8], mine: &[u8]) -> [u8; MAC_LEN] {
        self.mac(role, context, challenge, mine).finalize().into_bytes().into()
    }

    /// Checks a proof made by [`JobSecret::prove`], in constant time.
    pub fn verify(&self, role: Role, context: &[u8], challenge: &[u8], theirs: &[u8], proof: &[u8]) -> bool {
        self.mac(role, context, challenge, theirs).verify_slice(proof).is_ok()
    }

    fn mac(&self, role: Role, context: &[u8], challenge: &[u8], nonce: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        for part in [role.label(), context, challenge, nonce] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random nonce of `len` bytes.
pub fn nonce(len: usize) -> Result<Vec<u8>> {
    let mut n = vec![0u8; len];
    getrandom::fill(&mut n).map_err(|e| BootstrapError::Random {
        purpose: "a handshake nonce",
        detail: e.to_string(),
    })?;
    Ok(n)
}

/// The job secret named by the environment: `CHORUS_SECRET`, else the file `CHORUS_SECRET_FILE`
/// names, else none.
pub fn secret_from_env() -> Result<Option<JobSecret>> {
    secret_from_vars(&|name| std::env::var(name).ok())
}

/// [`secret_from_env`] with an explicit variable lookup.
pub fn secret_from_vars(vars: crate::env::Vars<'_>) -> Result<Option<JobSecret>> {
    if let Some(text) = vars(SECRET_VAR) {
        return Ok(JobSecret::new(&text));
    }
    let Some(path) = vars(SECRET_FILE_VAR) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| BootstrapError::InvalidEnv {
        var: SECRET_FILE_VAR.into(),
        value: path.clone(),
        reason: format!("cannot read the secret file: {e}"),
    })?;
    JobSecret::new(&text).map(Some).ok_or_else(|| BootstrapError::InvalidEnv {
        var: SECRET_FILE_VAR.into(),
        value: path,
        reason: "the secret file is empty".into(),
    })
}

/// Whether `CHORUS_REQUIRE_SECRET` asks to refuse listening beyond loopback without a secret.
pub fn secret_required_from_vars(vars: crate::env::Vars<'_>) -> bool {
    vars(REQUIRE_SECRET_VAR).is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

/// Warnings about unauthenticated listeners issued by this process; only the first is logged.
static UNAUTHENTICATED_LISTEN_WARNINGS: AtomicU64 = AtomicU64::new(0);

/// Called before listening on `ip` (`what`: "the store", "rank links") without a secret: fine on
/// loopback; beyond it, a warning (once per process) or, under `CHORUS_REQUIRE_SECRET=1`, an error.
pub fn check_unauthenticated_listen(ip: IpAddr, what: &'static str) -> Result<()> {
    check_unauthenticated_listen_with(ip, what, &|name| std::env::var(name).ok())
}

/// [`check_unauthenticated_listen`] with an explicit variable lookup.
pub fn check_unauthenticated_listen_with(ip: IpAddr, what: &'static str, vars: crate::env::Vars<'_>) -> Result<()> {
    if ip.is_loopback() {
        return Ok(());
    }
    if secret_required_from_vars(vars) {
        return Err(BootstrapError::SecretRequired { what, ip });
    }
    if UNAUTHENTICATED_LISTEN_WARNINGS.fetch_add(1, Ordering::Relaxed) == 0 {
        tracing::warn!(%ip, what, "listening beyond loopback without a job secret: anyone who reaches this port can join or disturb the job; set CHORUS_SECRET or CHORUS_SECRET_FILE on every rank (see SECURITY.md)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_secret_role_and_nonces() {
        let s = JobSecret::new("s3cret").unwrap();
        let other = JobSecret::new("other").unwrap();
        let p = s.prove(Role::StoreClient, b"", b"challenge", b"mine");
        assert!(s.verify(Role::StoreClient, b"", b"challenge", b"mine", &p));
        assert!(!other.verify(Role::StoreClient, b"", b"challenge", b"mine", &p));
        assert!(!s.verify(Role::StoreServer, b"", b"challenge", b"mine", &p));
        assert!(!s.verify(Role::StoreClient, b"", b"challengf", b"mine", &p));
        assert!(!s.verify(Role::StoreClient, b"x", b"challenge", b"mine", &p));
        assert!(!s.verify(Role::StoreClient, b"", b"challenge", b"mine", &p[..31]));
        // Length-prefixed parts: moving bytes between fields changes the proof.
        assert!(!s.verify(Role::StoreClient, b"", b"challeng", b"emine", &p));
    }

    #[test]
    fn secret_from_variables_and_files() {
        let none = |_: &str| None;
        assert_eq!(secret_from_vars(&none).unwrap(), None);
        let direct = |n: &str| (n == SECRET_VAR).then(|| " abc \n".to_string());
        assert_eq!(secret_from_vars(&direct).unwrap(), JobSecret::new("abc"));
        let dir = std::env::temp_dir().join(format!("chorus-secret-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        let path = dir.to_string_lossy().into_owned();
        let file = |n: &str| (n == SECRET_FILE_VAR).then(|| path.clone());
        assert_eq!(secret_from_vars(&file).unwrap(), JobSecret::new("from-file"));
        std::fs::write(&dir, "  \n").unwrap();
        assert!(secret_from_vars(&file).is_err(), "an empty secret file is an error");
        std::fs::remove_file(&dir).unwrap();
        assert!(secret_from_vars(&file).is_err(), "a missing secret file is an error");
        let generated = JobSecret::generate().unwrap();
        assert_eq!(generated.expose().len(), 64);
        assert_ne!(generated, JobSecret::generate().unwrap());
        assert_eq!(format!("{generated:?}"), "JobSecret(..)");
    }

    #[test]
    fn strict_mode_refuses_unauthenticated_listening_beyond_loopback() {
        let strict = |n: &str| (n == REQUIRE_SECRET_VAR).then(|| "1".to_string());
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        assert!(check_unauthenticated_listen_with(lo, "the store", &strict).is_ok());
        let err = check_unauthenticated_listen_with(any, "the store", &strict).unwrap_err();
        assert!(err.to_string().contains("CHORUS_SECRET"), "{err}");
        assert!(check_unauthenticated_listen_with(any, "the store", &|_| None).is_ok());
    }
}
