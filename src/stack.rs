//! Giving back the stack a thread no longer uses.
//!
//! A call's threads spend their lives waiting and moving small messages, on a few KiB of stack.
//! Now and then one goes deep: a TLS handshake, a model request through the HTTP client, the
//! start of a call. The pages touched then stay resident until the thread ends, and with four
//! threads per call they would be the largest part of a call's memory. After such a moment the
//! thread calls [`release_unused`], which tells the kernel that the part of its stack below the
//! current frame holds nothing (`madvise(MADV_DONTNEED)`): those pages are freed now and come
//! back zeroed if the stack grows there again. glibc does the same for a thread's whole stack
//! when the thread ends.

/// Stack kept below the current frame: the `madvise` call's own small frame lives there while
/// the pages further down are released. (A signal handler runs only when the system call has
/// returned, on pages that simply come back zeroed.)
const MARGIN: usize = 2 * 1024;

/// Releases the pages of the calling thread's stack below its current frame (less a margin).
/// Best effort: on any error nothing is released. Costs a few system calls; call it after a
/// deep operation, not on every wake-up.
pub fn release_unused() {
    let Some((low, _high)) = stack_bounds() else {
        return;
    };
    let page = page_size();
    let here = 0u8;
    let sp = std::ptr::addr_of!(here) as usize;
    let end = sp.saturating_sub(MARGIN) & !(page - 1);
    let start = (low + page - 1) & !(page - 1);
    if end <= start {
        return;
    }
    // SAFETY: [start, end) lies inside this thread's own stack mapping (between its lowest usable
    // address and MARGIN below the current frame), which no frame of this thread uses: the stack
    // grows down and every live frame is above `sp`. Other threads never point into a thread's
    // stack below its current frame. MADV_DONTNEED on private anonymous memory only replaces
    // the pages with zero-filled ones on next touch.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
    }
}

/// The calling thread's usable stack, `(lowest, highest)` address, guard page excluded.
fn stack_bounds() -> Option<(usize, usize)> {
    // SAFETY: the attribute object is initialised by pthread_getattr_np before it is read and
    // destroyed once; the out-pointers point at locals of the right types.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let mut guard: libc::size_t = 0;
        let stack = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        let guarded = libc::pthread_attr_getguardsize(&attr, &mut guard);
        libc::pthread_attr_destroy(&mut attr);
        if stack != 0 || guarded != 0 || addr.is_null() {
            return None;
        }
        let low = addr as usize;
        Some((low.saturating_add(guard), low.saturating_add(size)))
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident KiB of the mapping that holds `addr`, from /proc/self/smaps.
    fn resident_kib_at(addr: usize) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = a <= addr && addr < b;
                    continue;
                }
            }
            if inside {
                if let Some(rest) = line.strip_prefix("Rss:") {
                    return rest.trim().trim_end_matches("kB").trim().parse().ok();
                }
            }
        }
        None
    }

    #[inline(never)]
    fn go_deep(depth: usize) -> u64 {
        let mut block = [0u8; 4096];
        std::hint::black_box(&mut block);
        if depth == 0 {
            return block[17] as u64;
        }
        block[17] = depth as u8;
        go_deep(depth - 1) + std::hint::black_box(block)[17] as u64
    }

    #[test]
    fn a_deep_moment_is_given_back_and_the_thread_goes_on() {
        let handle = std::thread::Builder::new()
            .name("stack-test".into())
            .stack_size(1024 * 1024)
            .spawn(|| {
                let here = 0u8;
                let at = std::ptr::addr_of!(here) as usize;
                assert!(stack_bounds().is_some_and(|(low, high)| low < at && at < high));
                let before = resident_kib_at(at).expect("the stack's mapping");
                let sum = go_deep(64);
                let deep = resident_kib_at(at).expect("the stack's mapping");
                release_unused();
                let after = resident_kib_at(at).expect("the stack's mapping");
                // The thread still works, deep again.
                let again = go_deep(64);
                (before, deep, after, sum, again)
            })
            .expect("a thread");
        let (before, deep, after, sum, again) = handle.join().expect("no panic");
        assert_eq!(sum, again);
        assert!(
            deep >= before + 200,
            "64 frames of 4 KiB touched: {before} → {deep} KiB"
        );
        assert!(after + 200 <= deep, "released: {deep} → {after} KiB");
    }
}
