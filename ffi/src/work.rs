//! `chorus_work_t`: one handle type for every operation's `Work<R>`.
use crate::error::{code_of, FfiError, FfiResult, CHORUS_ERR_TIMEOUT, CHORUS_OK};
use chorus_backend::OpInfo;
use chorus_backend::{ChorusError, Work};
use std::sync::Mutex;
use std::time::Duration;

/// Type-erased `Work<R>`: the buffers `R` (caller memory wrappers or private copies) are dropped
/// once the result is taken.
trait Pending: Send {
    fn is_completed(&self) -> bool;
    fn wait_for(&self, d: Duration) -> bool;
    fn info(&self) -> OpInfo;
    /// The completed operation's result and report (moved out, not cloned).
    fn finish(self: Box<Self>) -> (Result<(), ChorusError>, OpInfo);
}

impl<R: Send + 'static> Pending for Work<R> {
    fn is_completed(&self) -> bool {
        Work::is_completed(self)
    }
    fn wait_for(&self, d: Duration) -> bool {
        Work::wait_for(self, d)
    }
    fn info(&self) -> OpInfo {
        Work::info(self)
    }
    fn finish(self: Box<Self>) -> (Result<(), ChorusError>, OpInfo) {
        let info = self.take_info();
        ((*self).wait_timeout(Duration::ZERO).map(drop), info)
    }
}

enum State {
    Pending(Box<dyn Pending>),
    /// Status, message and what the operation reported (failed ranks, epoch, contributors).
    Done(i32, String, OpInfo),
}

#[allow(non_camel_case_types)]
pub struct chorus_work {
    name: &'static str,
    state: Mutex<State>,
}

fn done_state(r: Result<(), ChorusError>, info: OpInfo) -> State {
    match r {
        Ok(()) => State::Done(CHORUS_OK, String::new(), info),
        Err(e) => State::Done(code_of(&e), e.to_string(), info),
    }
}

impl chorus_work {
    /// Wraps a freshly started operation. An operation that already failed (argument checks fail
    /// before anything is queued) is returned as the error instead, so the C call reports it.
    pub fn start<R: Send + 'static>(w: Work<R>) -> FfiResult<chorus_work> {
        let name = w.name();
        if w.is_completed() {
            let (r, info) = (Box::new(w) as Box<dyn Pending>).finish();
            r?;
            return Ok(chorus_work { name, state: Mutex::new(State::Done(CHORUS_OK, String::new(), info)) });
        }
        Ok(chorus_work { name, state: Mutex::new(State::Pending(Box::new(w))) })
    }

    pub fn is_completed(&self) -> bool {
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Pending(w) => w.is_completed(),
            State::Done(..) => true,
        }
    }

    /// What the completed operation reported: epoch, failed ranks, contributors. An error if it
    /// has not completed yet (the report is only final then).
    pub fn info(&self) -> FfiResult<OpInfo> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &*st {
            State::Done(_, _, info) => Ok(info.clone()),
            State::Pending(w) if w.is_completed() => Ok(w.info()),
            State::Pending(_) => Err(FfiError::invalid(format!("{}: the operation has not completed yet; wait for it (chorus_work_wait) before asking for its failed ranks or epoch", self.name))),
        }
    }

    /// Waits up to `timeout` (`None`: no limit) and returns the operation's result; repeatable.
    pub fn wait(&self, timeout: Option<Duration>) -> FfiResult<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let State::Pending(w) = &*st {
            let done = match timeout {
                Some(t) => w.wait_for(t),
                // As long as it takes (every operation has its own deadline); a wait this long
                // may run the operation on this thread.
                None => loop {
                    if w.wait_for(Duration::MAX) {
                        break true;
                    }
                },
            };
            if !done {
                return Err(FfiError {
                    code: CHORUS_ERR_TIMEOUT,
                    msg: format!("{} did not complete within {} ms (the operation is still running; wait again or destroy the group)", self.name, timeout.unwrap_or_default().as_millis()),
                });
            }
            let State::Pending(w) = std::mem::replace(&mut *st, State::Done(CHORUS_OK, String::new(), OpInfo::default())) else { unreachable!("checked above") };
            let (r, info) = w.finish();
            *st = done_state(r, info);
        }
        match &*st {
            State::Done(CHORUS_OK, _, _) => Ok(()),
            State::Done(code, msg, _) => Err(FfiError { code: *code, msg: msg.clone() }),
            State::Pending(_) => unreachable!("completed above"),
        }
    }
}
