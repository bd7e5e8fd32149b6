//! Files and directories only their owner can read: every file memlog writes holds journal
//! data, metadata or keys (docs/cluster-tls.md, "Files"). Modes are set at creation, never
//! after, so there is no moment at which another user could open one.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of memlog's files.
pub const FILE_MODE: u32 = 0o600;
/// Mode of memlog's directories.
pub const DIR_MODE: u32 = 0o700;

/// `OpenOptions` whose `create` makes a 0600 file.
pub fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates (truncating) a 0600 file for writing.
pub fn create(path: &Path) -> io::Result<File> {
    open_options().write(true).create(true).truncate(true).open(path)
}

/// Writes `bytes` to a new or truncated 0600 file.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    create(path)?.write_all(bytes.as_ref())
}

/// Creates `dir` and its missing parents as 0700 directories (existing ones keep their mode).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Creates one 0700 directory; fails if it exists.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(dir)
}

/// Tightens an existing directory made by an older memlog to 0700.
pub fn restrict_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn modes_hold_whatever_the_umask() {
        // SAFETY: umask only sets the process's file creation mask.
        let old = unsafe { libc::umask(0) };
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_dir_all(&nested).unwrap();
        write(&nested.join("f"), "x").unwrap();
        unsafe { libc::umask(old) };
        assert_eq!(mode(&dir.path().join("a")), DIR_MODE);
        assert_eq!(mode(&nested), DIR_MODE);
        assert_eq!(mode(&nested.join("f")), FILE_MODE);
    }
}
