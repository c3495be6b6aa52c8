//! Waiting for a descriptor to become readable, interruptible by a stop
//! signal (an eventfd), so worker threads block without polling timeouts and
//! still end promptly when the device shuts down.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A one-way "stop now" signal shared by a device's threads.
#[derive(Debug)]
pub struct Stop {
    fd: OwnedFd,
}

/// What woke a waiting thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Ready,
    Stop,
    Timeout,
}

impl Stop {
    pub fn new() -> io::Result<Stop> {
        // SAFETY: plain eventfd(2) call; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Stop { fd })
    }

    /// Wakes every waiter, now and forever after (the counter is never read).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64, as eventfd requires.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Waits until `fd` is readable (skip with -1), the stop signal fires, or
    /// `timeout_ms` passes (-1: no timeout).
    pub fn wait(&self, fd: RawFd, timeout_ms: i32) -> io::Result<Wake> {
        let mut fds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: two valid pollfds (a negative fd is ignored by poll).
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if fds[0].revents != 0 {
                return Ok(Wake::Stop);
            }
            if fds[1].revents != 0 {
                return Ok(Wake::Ready);
            }
            return Ok(Wake::Timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_wakes_waiters_for_good() {
        let stop = Stop::new().unwrap();
        assert_eq!(stop.wait(-1, 0).unwrap(), Wake::Timeout);
        stop.signal();
        assert_eq!(stop.wait(-1, 1000).unwrap(), Wake::Stop);
        assert_eq!(stop.wait(-1, 0).unwrap(), Wake::Stop);
    }
}
