//! Following a fork. Pingora forks when it runs as a daemon (`daemon: true` in its
//! configuration), after the application has built its engine and peer sets, and the child keeps
//! none of the parent's threads. The crate's own threads (a set's resolver, a peers-file
//! watcher, a service discovery, the stall cut's watchdog) record the fork generation they
//! started in; whoever uses them first in a later generation (the next request) starts them
//! again. This file and `cut/sys.rs` hold the crate's `unsafe` code.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// Forks since the hook was set, as this process counts them.
static FORKS: AtomicU64 = AtomicU64::new(0);
static HOOK: Once = Once::new();

/// The fork generation of this process: 0 in the process that first asked, one more in a child
/// after every fork. Whatever records a generation to compare with later asks here first, when
/// it is made (a set, a watchdog), so that the count is kept from before the fork it must see.
pub(crate) fn generation() -> u64 {
    HOOK.call_once(set_hook);
    current()
}

/// [`generation`] for the request path, once something has asked it: one relaxed load.
pub(crate) fn current() -> u64 {
    FORKS.load(Ordering::Relaxed)
}

#[cfg(unix)]
#[allow(unsafe_code)]
fn set_hook() {
    extern "C" fn in_child() {
        FORKS.fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: `in_child` captures nothing and lives as long as the process, as
    // `pthread_atfork` requires of the handlers it keeps; it only adds to an atomic, which is
    // async-signal-safe, as a handler run in the child of a multithreaded process must be.
    // The null handlers are allowed by POSIX.
    unsafe {
        libc::pthread_atfork(None, None, Some(in_child));
    }
}

#[cfg(not(unix))]
fn set_hook() {}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn a_child_is_one_generation_on() {
        let before = generation();
        // SAFETY: the child only reads an atomic and exits at once, without unwinding.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = if generation() == before + 1 { 0 } else { 1 };
            // SAFETY: `_exit` ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        assert!(pid > 0);
        let mut status = 0;
        // SAFETY: `status` is a valid place for `waitpid` to write.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(generation(), before, "the parent is not a child");
    }
}
