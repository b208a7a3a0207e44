//! What the calling thread's last blocking collective reported (`chorus_last_op_*`), kept per
//! thread like `chorus_last_error`: a blocking call has no work handle to ask.
use crate::error::{FfiError, FfiResult};
use chorus_backend::OpInfo;
use std::cell::RefCell;

thread_local! {
    /// The report; `None` after a blocking call that was refused before it ran (or before any
    /// blocking call).
    static LAST_OP: RefCell<Option<OpInfo>> = const { RefCell::new(None) };
}

/// Forgets the previous report (every blocking call starts with this).
pub fn clear() {
    LAST_OP.with(|l| l.borrow_mut().take());
}

pub fn set(info: OpInfo) {
    LAST_OP.with(|l| *l.borrow_mut() = Some(info));
}

/// `f` over the report; an error naming `what` when there is none.
pub fn with<T>(what: &str, f: impl FnOnce(&OpInfo) -> FfiResult<T>) -> FfiResult<T> {
    LAST_OP.with(|l| match &*l.borrow() {
        Some(info) => f(info),
        None => Err(FfiError::invalid(format!(
            "{what}: the calling thread's last blocking collective (work == NULL) reported nothing: it was refused before it ran, or there was none"
        ))),
    })
}
