//! Status codes, the per-thread last-error message and the guard every entry point runs in.
use chorus_backend::{ChorusError, ErrorKind};
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub const CHORUS_OK: i32 = 0;
pub const CHORUS_ERR_INVALID_ARGUMENT: i32 = 1;
pub const CHORUS_ERR_UNSUPPORTED: i32 = 2;
pub const CHORUS_ERR_MISMATCH: i32 = 3;
pub const CHORUS_ERR_TIMEOUT: i32 = 4;
pub const CHORUS_ERR_PEER_FAILED: i32 = 5;
pub const CHORUS_ERR_STORE: i32 = 6;
pub const CHORUS_ERR_TRANSPORT: i32 = 7;
pub const CHORUS_ERR_DESTROYED: i32 = 8;
pub const CHORUS_ERR_INCOMPLETE: i32 = 9;
pub const CHORUS_ERR_INTERNAL: i32 = 10;

/// The status codes, in the order the header lists them (rendered into `chorus_status_t`).
pub const STATUS_CODES: &[(&str, i32, &str)] = &[
    ("CHORUS_OK", CHORUS_OK, "success"),
    ("CHORUS_ERR_INVALID_ARGUMENT", CHORUS_ERR_INVALID_ARGUMENT, "bad pointer, size, rank, root, dtype or list length"),
    ("CHORUS_ERR_UNSUPPORTED", CHORUS_ERR_UNSUPPORTED, "unsupported op/dtype pair, or no CUDA available for device memory"),
    ("CHORUS_ERR_MISMATCH", CHORUS_ERR_MISMATCH, "ranks disagree on the arguments of a collective"),
    ("CHORUS_ERR_TIMEOUT", CHORUS_ERR_TIMEOUT, "an operation (or chorus_work_wait) ran past its deadline"),
    ("CHORUS_ERR_PEER_FAILED", CHORUS_ERR_PEER_FAILED, "a peer failed or the group was aborted"),
    ("CHORUS_ERR_STORE", CHORUS_ERR_STORE, "rendezvous through the store failed"),
    ("CHORUS_ERR_TRANSPORT", CHORUS_ERR_TRANSPORT, "connecting or moving data (socket, shared memory) failed"),
    ("CHORUS_ERR_DESTROYED", CHORUS_ERR_DESTROYED, "the group was destroyed"),
    ("CHORUS_ERR_INCOMPLETE", CHORUS_ERR_INCOMPLETE, "the operation was abandoned before it completed"),
    ("CHORUS_ERR_INTERNAL", CHORUS_ERR_INTERNAL, "a bug inside chorus (a caught panic); see the message"),
];

/// An error on its way out through the C ABI: a status code and a message.
#[derive(Debug)]
pub struct FfiError {
    pub code: i32,
    pub msg: String,
}

impl FfiError {
    pub fn invalid(msg: impl Into<String>) -> FfiError {
        FfiError { code: CHORUS_ERR_INVALID_ARGUMENT, msg: msg.into() }
    }
    pub fn unsupported(msg: impl Into<String>) -> FfiError {
        FfiError { code: CHORUS_ERR_UNSUPPORTED, msg: msg.into() }
    }
    /// The same error, its message prefixed with the operation that failed (`"gather: ..."`).
    pub fn in_op(self, op: &str) -> FfiError {
        FfiError { code: self.code, msg: format!("{op}: {}", self.msg) }
    }
}

/// The status code of an error: one per [`ErrorKind`], matched exhaustively so a new kind needs a
/// decision here (the backend classifies every variant in `ChorusError::kind`).
pub fn code_of(e: &ChorusError) -> i32 {
    match e.kind() {
        ErrorKind::InvalidArgument => CHORUS_ERR_INVALID_ARGUMENT,
        ErrorKind::Unsupported => CHORUS_ERR_UNSUPPORTED,
        ErrorKind::Mismatch => CHORUS_ERR_MISMATCH,
        ErrorKind::Timeout => CHORUS_ERR_TIMEOUT,
        ErrorKind::PeerFailed => CHORUS_ERR_PEER_FAILED,
        ErrorKind::Store => CHORUS_ERR_STORE,
        ErrorKind::Transport => CHORUS_ERR_TRANSPORT,
        ErrorKind::Destroyed => CHORUS_ERR_DESTROYED,
        ErrorKind::Incomplete => CHORUS_ERR_INCOMPLETE,
    }
}

impl From<ChorusError> for FfiError {
    fn from(e: ChorusError) -> FfiError {
        FfiError { code: code_of(&e), msg: e.to_string() }
    }
}

pub type FfiResult<T> = std::result::Result<T, FfiError>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub fn set_last_error(msg: &str) {
    // Interior NULs would truncate the C string; replace them so the message stays whole.
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Pointer to this thread's last error message (valid until the next failing call on the thread).
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".into()
    }
}

/// Runs an entry point's body: maps errors to status codes (recording the message) and catches
/// every panic so none unwinds into C.
pub fn guard(f: impl FnOnce() -> FfiResult<()>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CHORUS_OK,
        Ok(Err(e)) => {
            set_last_error(&e.msg);
            e.code
        }
        Err(p) => {
            set_last_error(&format!("internal error in chorus (panic: {}); please report it", panic_message(&*p)));
            CHORUS_ERR_INTERNAL
        }
    }
}

/// Like [`guard`] for entry points that return a value instead of a status.
pub fn guard_value<T>(fallback: T, f: impl FnOnce() -> FfiResult<T>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_last_error(&e.msg);
            fallback
        }
        Err(p) => {
            set_last_error(&format!("internal error in chorus (panic: {}); please report it", panic_message(&*p)));
            fallback
        }
    }
}
