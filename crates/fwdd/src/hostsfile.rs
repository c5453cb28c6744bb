//! Writing container names to hosts files (issue #31): fwdd's own file in
//! its runtime directory, and fwd's block in the system hosts file when
//! `hosts_file` is configured. What goes in them, and where in the system
//! file, is `fwd_core::hostsfile`'s; this is the I/O.
//!
//! A hosts file is read by every resolver on the machine at any moment, so
//! it is replaced atomically (a temporary file renamed over it); a reader
//! sees the old file or the new one, never a part.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fwd_core::hostsfile;

/// The mode of a hosts file fwdd creates: everyone resolves through it.
pub const NEW_FILE_MODE: u32 = 0o644;

/// Tells apart the temporary files of one fwdd (the pid tells fwdds apart).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `contents`: a new file in the same directory (its
/// name unique, created exclusively), written, synced, renamed over `path`,
/// then the directory synced so the rename survives a crash.
///
/// An existing file keeps its owner and mode (`mode` is for a new file); a
/// symlink is followed and its target replaced, so the link stays. When the
/// rename is refused with EBUSY or EXDEV (`path` is a bind mount, as Docker
/// makes a container's /etc/hosts), the file is rewritten in place instead
/// ([`rewrite_in_place`]).
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let path = resolve_link(path)?;
    let existing = match fs::metadata(&path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mode = existing
        .as_ref()
        .map_or(mode, |meta| meta.permissions().mode() & 0o7777);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (temp_path, mut temp) = create_temp(&dir, &path, mode)?;
    let written = (|| {
        temp.write_all(contents)?;
        // The mode asked for, whatever the umask took away at creation.
        temp.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(meta) = &existing {
            let temp_meta = temp.metadata()?;
            if (temp_meta.uid(), temp_meta.gid()) != (meta.uid(), meta.gid()) {
                std::os::unix::fs::fchown(&temp, Some(meta.uid()), Some(meta.gid()))?;
            }
        }
        temp.sync_all()
    })();
    drop(temp);
    if let Err(e) = written {
        let _ = fs::remove_file(&temp_path);
        return Err(e);
    }
    match fs::rename(&temp_path, &path) {
        Ok(()) => sync_dir(&dir),
        Err(e) if existing.is_some() && rename_refused_for_a_mount(&e) => {
            let _ = fs::remove_file(&temp_path);
            rewrite_in_place(&path, contents)
        }
        Err(e) => {
            let _ = fs::remove_file(&temp_path);
            Err(e)
        }
    }
}

/// Makes a rename in `dir` durable. A plain fsync: macOS refuses a full
/// one on a directory.
fn sync_dir(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(dir)?;
    nix::unistd::fsync(dir.as_raw_fd()).map_err(io::Error::from)
}

/// Whether a rename failed because `path` is a mount point (EBUSY) or the
/// temporary file is on another file system than the mount (EXDEV).
fn rename_refused_for_a_mount(e: &io::Error) -> bool {
    let errno = e.raw_os_error();
    errno == Some(nix::errno::Errno::EBUSY as i32) || errno == Some(nix::errno::Errno::EXDEV as i32)
}

/// Rewrites an existing file where it is, for when it cannot be replaced:
/// written over from the start without truncating, then cut to the new
/// length, so a reader never sees it empty (it may see a mix of old and new
/// for that moment). Owner and mode stay, being the same file.
pub fn rewrite_in_place(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.write_all(contents)?;
    file.set_len(contents.len() as u64)?;
    file.sync_all()
}

/// `path`, or the file it links to (followed to the end).
fn resolve_link(path: &Path) -> io::Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(path),
        _ => Ok(path.to_path_buf()),
    }
}

/// A new file next to `target`, created exclusively with `mode`.
fn create_temp(dir: &Path, target: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    let base = target
        .file_name()
        .map_or_else(|| "hosts".into(), |n| n.to_string_lossy().into_owned());
    loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp_path = dir.join(format!(".{base}.fwdd-{}-{n}.tmp", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp_path)
        {
            Ok(file) => return Ok((temp_path, file)),
            // Left by an fwdd of the same pid that crashed: try the next.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Puts `block` (from `fwd_core::hostsfile::render_block`) in the hosts
/// file at `path` in place of any fwd block there, or removes fwd's block
/// when `block` is `None` (at a clean exit). The file is written only when
/// its text changes. Returns the names the file holds outside fwd's block,
/// which fwd must never shadow.
///
/// A missing file is created (mode [`NEW_FILE_MODE`]) for a block, and is
/// no error without one. A file that is not UTF-8 is left alone
/// (`InvalidData`): fwd rewrites only what it can read exactly.
pub fn update_block(path: &Path, block: Option<&str>) -> io::Result<BTreeSet<String>> {
    let existing = match fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not UTF-8 text; left as it is", path.display()),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound && block.is_none() => {
            return Ok(BTreeSet::new())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let updated = hostsfile::splice(&existing, block);
    if updated != existing {
        write_atomically(path, updated.as_bytes(), NEW_FILE_MODE)?;
    }
    Ok(hostsfile::names_outside_block(&updated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fwd_core::hostsfile::{render_block, Entry, BEGIN_MARK};
    use std::net::{IpAddr, Ipv4Addr};

    const DEBIAN: &str = "127.0.0.1\tlocalhost\n127.0.1.1\trunner\n\n\
        # The following lines are desirable for IPv6 capable hosts\n\
        ::1     localhost ip6-localhost ip6-loopback\n";

    fn block(name: &str) -> String {
        render_block(&[Entry {
            address: IpAddr::V4(Ipv4Addr::new(127, 77, 0, 5)),
            names: vec![name.to_string()],
        }])
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    fn only_file_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_block_added_then_removed_leaves_the_file_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        fs::write(&path, DEBIAN).expect("write");

        let names = update_block(&path, Some(&block("db"))).expect("update");
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            format!("{DEBIAN}{}", block("db"))
        );
        assert!(names.contains("localhost") && names.contains("ip6-loopback"));
        assert!(!names.contains("db"));

        // After a crash: the old block is replaced in place, not repeated.
        update_block(&path, Some(&block("web"))).expect("update");
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text, format!("{DEBIAN}{}", block("web")));
        assert_eq!(text.matches(BEGIN_MARK).count(), 1);

        update_block(&path, None).expect("remove");
        assert_eq!(fs::read_to_string(&path).expect("read"), DEBIAN);
        assert_eq!(
            only_file_in(dir.path()),
            ["hosts"],
            "no temporary file left"
        );
    }

    #[test]
    fn the_mode_of_the_file_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        fs::write(&path, DEBIAN).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        update_block(&path, Some(&block("db"))).expect("update");
        assert_eq!(mode_of(&path), 0o640);

        write_atomically(&path, b"x\n", 0o600).expect("write");
        assert_eq!(mode_of(&path), 0o640, "an existing file's mode wins");
    }

    #[test]
    fn a_new_file_gets_the_mode_asked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("names.hosts");
        write_atomically(&path, b"127.77.0.5\tdb\n", 0o604).expect("write");
        assert_eq!(mode_of(&path), 0o604);
        assert_eq!(fs::read(&path).expect("read"), b"127.77.0.5\tdb\n");
    }

    #[test]
    fn an_unchanged_file_is_not_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        fs::write(&path, format!("{DEBIAN}{}", block("db"))).expect("write");
        let before = fs::metadata(&path).expect("stat").ino();
        update_block(&path, Some(&block("db"))).expect("update");
        assert_eq!(fs::metadata(&path).expect("stat").ino(), before);

        // A change does replace the file (so the inode check can fail).
        update_block(&path, Some(&block("web"))).expect("update");
        assert_ne!(fs::metadata(&path).expect("stat").ino(), before);
    }

    #[test]
    fn a_missing_file_is_no_error_without_a_block_and_is_made_for_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        assert_eq!(update_block(&path, None).expect("update"), BTreeSet::new());
        assert!(!path.exists());

        update_block(&path, Some(&block("db"))).expect("update");
        assert_eq!(fs::read_to_string(&path).expect("read"), block("db"));
        assert_eq!(mode_of(&path), NEW_FILE_MODE);
    }

    #[test]
    fn a_file_that_is_not_utf8_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        let bytes = b"127.0.0.1 localhost\n10.0.0.1 caf\xe9\n";
        fs::write(&path, bytes).expect("write");
        let err = update_block(&path, Some(&block("db"))).expect_err("not UTF-8");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(fs::read(&path).expect("read"), bytes);
    }

    #[test]
    fn a_symlink_stays_and_its_target_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("real-hosts");
        let link = dir.path().join("hosts");
        fs::write(&target, DEBIAN).expect("write");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        update_block(&link, Some(&block("db"))).expect("update");
        assert!(fs::symlink_metadata(&link)
            .expect("lstat")
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read_to_string(&target).expect("read"),
            format!("{DEBIAN}{}", block("db"))
        );
    }

    #[test]
    fn rewriting_in_place_keeps_the_inode_and_cuts_to_the_new_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        let long = format!("{DEBIAN}{}", block("a-rather-long-name"));
        fs::write(&path, &long).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let inode = fs::metadata(&path).expect("stat").ino();

        rewrite_in_place(&path, DEBIAN.as_bytes()).expect("shorter");
        assert_eq!(fs::read_to_string(&path).expect("read"), DEBIAN);
        rewrite_in_place(&path, long.as_bytes()).expect("longer");
        assert_eq!(fs::read_to_string(&path).expect("read"), long);

        let meta = fs::metadata(&path).expect("stat");
        assert_eq!(meta.ino(), inode);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    }

    #[test]
    fn rewriting_in_place_never_creates_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        let err = rewrite_in_place(&path, b"x\n").expect_err("missing");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!path.exists());
    }

    /// The fallback on a real bind mount, which needs root in a mount
    /// namespace of its own:
    /// `unshare -m --propagation private cargo test -p fwdd --bin fwdd hostsfile -- --ignored`
    #[test]
    #[ignore = "needs root in a private mount namespace (unshare -m)"]
    fn a_bind_mounted_file_is_rewritten_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("source");
        let path = dir.path().join("hosts");
        fs::write(&source, DEBIAN).expect("write");
        fs::write(&path, "").expect("write");
        let mounted = std::process::Command::new("mount")
            .arg("--bind")
            .arg(&source)
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            mounted.success(),
            "mount --bind: run this test under unshare -m as root"
        );
        let renamed = fs::rename(&source, &path).expect_err("a mount point");
        assert!(rename_refused_for_a_mount(&renamed), "{renamed}");

        update_block(&path, Some(&block("db"))).expect("update");
        let want = format!("{DEBIAN}{}", block("db"));
        assert_eq!(fs::read_to_string(&path).expect("read"), want);
        assert_eq!(
            fs::read_to_string(&source).expect("read"),
            want,
            "the same file"
        );
        update_block(&path, None).expect("remove");
        assert_eq!(fs::read_to_string(&source).expect("read"), DEBIAN);
        assert_eq!(
            only_file_in(dir.path()),
            ["hosts", "source"],
            "no temporary file left"
        );

        let unmounted = std::process::Command::new("umount")
            .arg(&path)
            .status()
            .expect("run umount");
        assert!(unmounted.success());
    }

    #[test]
    fn a_mount_point_refusal_is_told_apart() {
        let busy = io::Error::from_raw_os_error(nix::errno::Errno::EBUSY as i32);
        let cross = io::Error::from_raw_os_error(nix::errno::Errno::EXDEV as i32);
        let denied = io::Error::from_raw_os_error(nix::errno::Errno::EACCES as i32);
        assert!(rename_refused_for_a_mount(&busy));
        assert!(rename_refused_for_a_mount(&cross));
        assert!(!rename_refused_for_a_mount(&denied));
    }
}
