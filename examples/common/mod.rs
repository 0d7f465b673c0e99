//! What the bench programs share: the one way they write a state through a mount, and a free
//! loopback port. Each program owns its own processes and figures.

// Each example uses a part of this.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `open(O_WRONLY|O_CREAT|O_TRUNC)` + `write` + `close` of `path`, the way an application
/// writes a state: `close` is the commit, so its result is checked. `Err` names the call that
/// failed and its error.
pub fn write_state(path: &Path, data: &[u8]) -> Result<(), (&'static str, std::io::Error)> {
    let c = CString::new(path.as_os_str().as_bytes()).expect("a path without NUL");
    // SAFETY: plain syscalls on a valid C string and buffer; the descriptor is closed on every path.
    unsafe {
        let fd = libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644);
        if fd < 0 {
            return Err(("open", std::io::Error::last_os_error()));
        }
        if libc::write(fd, data.as_ptr().cast(), data.len()) != data.len() as isize {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(("write", e));
        }
        if libc::close(fd) != 0 {
            return Err(("close (the commit)", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// [`write_state`], panicking with the path, the call and the error when it fails.
pub fn must_write_state(path: &Path, data: &[u8]) {
    if let Err((call, e)) = write_state(path, data) {
        panic!("{call} of {} failed: {e}", path.display());
    }
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
